-- wrk script: plain GET / ; done() prints one JSON line (prefixed "JSON ") with
-- requests/s and latency percentiles (microseconds) from wrk's latency histogram.
wrk.method = "GET"
wrk.path = "/"

done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  io.write(string.format(
    'JSON {"requests":%d,"duration_s":%.3f,"rps":%.1f,"bytes":%d,"errors":%d,' ..
    '"non2xx":%d,"lat_us":{"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, secs, summary.requests / secs, summary.bytes, errors, e.status,
    latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
