//! Mann-Whitney U test on latency histograms (being written).
