//! Decoding of Prometheus's `/api/v1/query` and `/api/v1/query_range` JSON into
//! `cutover_promql` values. Pure: no IO, so every shape is unit-tested with plain strings.

use cutover_promql::{Labels, Sample, SeriesDump, Value};
use serde::Deserialize;

/// The envelope every API answer shares.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope {
    pub status: String,
    pub data: Option<serde_json::Value>,
    pub error: Option<String>,
    #[serde(rename = "errorType")]
    pub error_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Vector(Vec<VectorSample>),
    Scalar(RawPoint),
    Matrix(Vec<MatrixSeries>),
    String(serde::de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct VectorSample {
    metric: Labels,
    value: RawPoint,
}

#[derive(Debug, Deserialize)]
struct MatrixSeries {
    metric: Labels,
    values: Vec<RawPoint>,
}

/// `[<unix seconds as a JSON number>, "<value as a string>"]`: values are strings so that
/// `NaN` and `±Inf` survive JSON.
#[derive(Debug, Deserialize)]
struct RawPoint(f64, String);

impl RawPoint {
    fn decode(&self) -> Result<(i64, f64), String> {
        // Prometheus timestamps have millisecond precision; rounding undoes the float seconds.
        let t_ms = (self.0 * 1000.0).round() as i64;
        Ok((t_ms, parse_value(&self.1)?))
    }
}

/// Parses a sample value as Prometheus formats it (`"1.5"`, `"NaN"`, `"+Inf"`, `"-Inf"`).
pub(crate) fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => s
            .parse::<f64>()
            .map_err(|e| format!("sample value {s:?}: {e}")),
    }
}

/// Decodes the `data` member of a successful answer.
pub(crate) fn decode_data(data: serde_json::Value) -> Result<Value, String> {
    let data: Data = serde_json::from_value(data).map_err(|e| format!("data: {e}"))?;
    Ok(match data {
        Data::Scalar(p) => Value::Scalar(p.decode()?.1),
        Data::Vector(samples) => Value::Vector(
            samples
                .into_iter()
                .map(|s| {
                    Ok(Sample {
                        labels: s.metric,
                        value: s.value.decode()?.1,
                    })
                })
                .collect::<Result<_, String>>()?,
        ),
        Data::Matrix(series) => Value::Matrix(
            series
                .into_iter()
                .map(|s| {
                    Ok(SeriesDump {
                        labels: s.metric,
                        samples: s
                            .values
                            .iter()
                            .map(RawPoint::decode)
                            .collect::<Result<_, String>>()?,
                    })
                })
                .collect::<Result<_, String>>()?,
        ),
        Data::String(_) => return Err("string results are not supported in rules".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(json: &str) -> Result<Value, String> {
        decode_data(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn vector_with_special_values() {
        let v = decode(
            r#"{"resultType":"vector","result":[
                {"metric":{"__name__":"up","job":"a"},"value":[1700000000.123,"NaN"]},
                {"metric":{"job":"b"},"value":[1700000000.123,"+Inf"]},
                {"metric":{},"value":[1700000000.123,"-1.5e-3"]}]}"#,
        )
        .unwrap();
        let Value::Vector(s) = v else {
            panic!("not a vector")
        };
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].labels["job"], "a");
        assert!(s[0].value.is_nan());
        assert_eq!(s[1].value, f64::INFINITY);
        assert_eq!(s[2].value, -0.0015);
    }

    #[test]
    fn scalar_and_matrix() {
        let Value::Scalar(x) = decode(r#"{"resultType":"scalar","result":[1.5,"-Inf"]}"#).unwrap()
        else {
            panic!("not a scalar")
        };
        assert_eq!(x, f64::NEG_INFINITY);
        let Value::Matrix(m) = decode(
            r#"{"resultType":"matrix","result":[
                {"metric":{"a":"1"},"values":[[1700000000.1,"1"],[1700000000.2,"2"]]}]}"#,
        )
        .unwrap() else {
            panic!("not a matrix")
        };
        assert_eq!(
            m[0].samples,
            vec![(1_700_000_000_100, 1.0), (1_700_000_000_200, 2.0)]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(r#"{"resultType":"vector","result":[{"metric":{}}]}"#).is_err());
        assert!(
            decode(r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}"#).is_err()
        );
        assert!(decode(r#"{"resultType":"string","result":[1,"x"]}"#).is_err());
        assert!(decode(r#"{"resultType":"histogram","result":[]}"#).is_err());
    }
}
