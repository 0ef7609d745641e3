//! A reader of the Prometheus text exposition format (version 0.0.4) that also takes the
//! OpenMetrics text format (1.0): the samples, their labels and values. A scrape is
//! untrusted network input, so nothing here panics on it: a line that does not read is
//! skipped and counted, never fatal.
//!
//! What it reads, per line (`\n`-separated; a trailing `\r` is dropped):
//! - blank lines, and lines whose first non-blank character is `#` (`# HELP`, `# TYPE`,
//!   `# UNIT`, comments), are passed over; `# EOF` (OpenMetrics) ends the exposition;
//! - a sample: `name{label="value",…} value [timestamp] [# exemplar]`. The name is
//!   `[a-zA-Z_:][a-zA-Z0-9_:]*`; the label set is optional, may end with a comma and may
//!   hold blanks between its tokens; a label value may hold the escapes `\\`, `\"` and
//!   `\n` (any other escape makes the line unreadable, as it does for Prometheus'
//!   own parser); the value is a float, `NaN`, `+Inf` or `-Inf`; the timestamp, when
//!   there is one, is an integer (milliseconds, 0.0.4) or a float (seconds,
//!   OpenMetrics) and is read but not kept (a scrape is taken at the time it is taken);
//!   an OpenMetrics exemplar after ` # ` is ignored.
//!
//! A second sample of a series already read (same name, same labels) is skipped and
//! counted too: summing both would count its requests twice.
//!
//! Not read: metric names in quotes (the UTF-8 names of Prometheus 3, sent only to a
//! scraper that asks for them), and the protobuf format (the scrape asks for text).
//!
//! Why no crate: `prometheus-client`, already in the workspace, encodes and does not
//! parse. `prometheus-parse` splits label sets on `,` and `=` with no regard for quotes
//! or escapes (a label value holding a comma or `\"` is misread, not refused) and brings
//! `regex`, `chrono` and `itertools`; `openmetrics-parser` is LGPL-3.0 and reads strict
//! OpenMetrics only. The grammar here is small and is tested against the output of the
//! Go and Python client libraries.

use std::collections::BTreeSet;

/// Labels of a sample, sorted by name (no name twice).
pub type Labels = Vec<(String, String)>;

/// One sample of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (for a histogram bucket, `…_bucket`).
    pub name: String,
    /// Its labels, sorted by name.
    pub labels: Labels,
    /// Its value (may be NaN or infinite).
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What an exposition held.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// The samples read, in order, of the names asked for.
    pub samples: Vec<Sample>,
    /// Lines skipped because they did not read (or repeated a series).
    pub skipped: usize,
    /// The first skipped line's number (from 1) and why, for the step's detail.
    pub first_skipped: Option<(usize, &'static str)>,
}

/// Reads `text`, keeping the samples whose name `keep` accepts; every line is read (and
/// counted when it does not read) whether kept or not.
pub fn parse(text: &str, keep: impl Fn(&str) -> bool) -> Exposition {
    let mut exposition = Exposition::default();
    let mut seen: BTreeSet<(String, Labels)> = BTreeSet::new();
    for (index, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = line.trim_start_matches([' ', '\t']);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            if comment.trim() == "EOF" {
                break;
            }
            continue;
        }
        let mut skip = |why: &'static str| {
            exposition.skipped += 1;
            exposition.first_skipped.get_or_insert((index + 1, why));
        };
        match parse_sample(line) {
            Ok(sample) => {
                if !keep(&sample.name) {
                    continue;
                }
                if !seen.insert((sample.name.clone(), sample.labels.clone())) {
                    skip("a second sample of the same series");
                    continue;
                }
                exposition.samples.push(sample);
            }
            Err(why) => skip(why),
        }
    }
    exposition
}

/// One sample line (not blank, not a comment).
fn parse_sample(line: &str) -> Result<Sample, &'static str> {
    let mut cursor = Cursor { rest: line };
    let name = cursor.name(true).ok_or("no metric name")?.to_owned();
    let blank_after_name = cursor.blanks();
    let mut labels = Labels::new();
    if cursor.eat('{') {
        loop {
            cursor.blanks();
            if cursor.eat('}') {
                break;
            }
            let label = cursor.name(false).ok_or("a label name is missing")?;
            cursor.blanks();
            if !cursor.eat('=') {
                return Err("a label has no `=`");
            }
            cursor.blanks();
            let value = cursor.quoted()?;
            labels.push((label.to_owned(), value));
            cursor.blanks();
            if cursor.eat(',') {
                continue;
            }
            if cursor.eat('}') {
                break;
            }
            return Err("a label set is not closed");
        }
        labels.sort();
        if labels.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err("a label is given twice");
        }
        // A label set ends the name, so the blank after it may be left out (as
        // Prometheus reads it).
        cursor.blanks();
    } else if !blank_after_name {
        return Err("no blank between the name and the value");
    }
    let value = parse_float(cursor.token()).ok_or("the value is not a number")?;
    cursor.blanks();
    if !cursor.rest.is_empty() && !cursor.rest.starts_with('#') {
        // The timestamp is read for its syntax only.
        parse_float(cursor.token())
            .filter(|t| t.is_finite())
            .ok_or("the timestamp is not a number")?;
        cursor.blanks();
    }
    // What is left may only be an OpenMetrics exemplar.
    if !cursor.rest.is_empty() && !cursor.rest.starts_with('#') {
        return Err("more after the value than a timestamp");
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// A float as the text formats write it: Go's `ParseFloat` syntax, which Rust's parser
/// also reads for decimal and exponent forms and for `NaN`, `+Inf`, `-Inf` and `Inf` in
/// any case.
fn parse_float(token: &str) -> Option<f64> {
    if token.is_empty() {
        return None;
    }
    token.parse::<f64>().ok()
}

/// The unread part of a line.
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    /// Skips blanks; whether there were any.
    fn blanks(&mut self) -> bool {
        let before = self.rest.len();
        self.rest = self.rest.trim_start_matches([' ', '\t']);
        self.rest.len() != before
    }

    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// A metric name (`:` allowed) or a label name.
    fn name(&mut self, metric: bool) -> Option<&'a str> {
        let allowed = |i: usize, c: char| {
            c == '_'
                || (metric && c == ':')
                || c.is_ascii_alphabetic()
                || (i > 0 && c.is_ascii_digit())
        };
        let end = self
            .rest
            .char_indices()
            .find(|(i, c)| !allowed(*i, *c))
            .map_or(self.rest.len(), |(i, _)| i);
        if end == 0 {
            return None;
        }
        let (name, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(name)
    }

    /// Up to the next blank.
    fn token(&mut self) -> &'a str {
        let end = self.rest.find([' ', '\t']).unwrap_or(self.rest.len());
        let (token, rest) = self.rest.split_at(end);
        self.rest = rest;
        token
    }

    /// A label value in double quotes, its escapes undone.
    fn quoted(&mut self) -> Result<String, &'static str> {
        if !self.eat('"') {
            return Err("a label value is not quoted");
        }
        let mut value = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return Ok(value);
                }
                '\\' => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => return Err("a label value holds an unknown escape"),
                },
                other => value.push(other),
            }
        }
        Err("a label value is not closed")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn all(text: &str) -> Exposition {
        parse(text, |_| true)
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        let mut labels: Labels = pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        labels
    }

    /// As Go's client_golang (`promhttp`, text format 0.0.4) writes a counter vector
    /// and a histogram: HELP and TYPE lines, labels in name order, `le` last with the
    /// bucket bounds in `%g` form, then `_sum` and `_count`.
    const GO: &str = r#"# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 8
# HELP http_request_duration_seconds Duration of HTTP requests.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{handler="/api",method="get",le="0.005"} 24054
http_request_duration_seconds_bucket{handler="/api",method="get",le="0.01"} 33444
http_request_duration_seconds_bucket{handler="/api",method="get",le="0.025"} 100392
http_request_duration_seconds_bucket{handler="/api",method="get",le="0.05"} 129389
http_request_duration_seconds_bucket{handler="/api",method="get",le="0.1"} 133988
http_request_duration_seconds_bucket{handler="/api",method="get",le="0.25"} 134000
http_request_duration_seconds_bucket{handler="/api",method="get",le="0.5"} 134000
http_request_duration_seconds_bucket{handler="/api",method="get",le="1"} 134000
http_request_duration_seconds_bucket{handler="/api",method="get",le="2.5"} 134000
http_request_duration_seconds_bucket{handler="/api",method="get",le="5"} 134000
http_request_duration_seconds_bucket{handler="/api",method="get",le="10"} 134000
http_request_duration_seconds_bucket{handler="/api",method="get",le="+Inf"} 144320
http_request_duration_seconds_sum{handler="/api",method="get"} 53423
http_request_duration_seconds_count{handler="/api",method="get"} 144320
# HELP http_requests_total Total number of HTTP requests by status code.
# TYPE http_requests_total counter
http_requests_total{code="200",method="get"} 1027
http_requests_total{code="500",method="get"} 3
"#;

    /// As Python's prometheus_client writes the same (`generate_latest`, 0.0.4): float
    /// values (`1027.0`), the `_created` gauges of counters and histograms, and `+Inf`.
    const PYTHON: &str = r#"# HELP python_info Python platform information
# TYPE python_info gauge
python_info{implementation="CPython",major="3",minor="11",patchlevel="2",version="3.11.2"} 1.0
# HELP http_requests_total Requests served
# TYPE http_requests_total counter
http_requests_total{code="200",path="/"} 1027.0
http_requests_total{code="503",path="/"} 2.0
# HELP http_requests_created Requests served
# TYPE http_requests_created gauge
http_requests_created{code="200",path="/"} 1.7057408432851188e+09
http_requests_created{code="503",path="/"} 1.7057408432851188e+09
# HELP http_request_duration_seconds Request latency
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.005",path="/"} 2.0
http_request_duration_seconds_bucket{le="0.01",path="/"} 3.0
http_request_duration_seconds_bucket{le="+Inf",path="/"} 3.0
http_request_duration_seconds_count{path="/"} 3.0
http_request_duration_seconds_sum{path="/"} 0.0123
http_request_duration_seconds_created{path="/"} 1.7057408432851188e+09
"#;

    /// OpenMetrics as both libraries write it when asked: counter families named without
    /// `_total`, exemplars, float timestamps, `# UNIT`, `# EOF`.
    const OPENMETRICS: &str = "# TYPE http_requests counter\n\
# HELP http_requests Requests served.\n\
http_requests_total{code=\"200\"} 1027 1520879607.789\n\
http_requests_total{code=\"500\"} 3 # {trace_id=\"KOO5S4vxi0o\"} 1 1520879607.789\n\
http_requests_created{code=\"200\"} 1520430000.123\n\
# TYPE http_request_duration_seconds histogram\n\
# UNIT http_request_duration_seconds seconds\n\
http_request_duration_seconds_bucket{le=\"0.1\"} 8 # {trace_id=\"oHg5SJYRHA0\"} 0.054 123.0\n\
http_request_duration_seconds_bucket{le=\"+Inf\"} 10\n\
# EOF\n\
http_requests_total{code=\"200\"} 99999\n";

    #[test]
    fn the_go_client_exposition_reads_whole() {
        let read = all(GO);
        assert_eq!(read.skipped, 0, "{read:?}");
        assert_eq!(read.samples.len(), 1 + 12 + 2 + 2);
        let inf = read
            .samples
            .iter()
            .find(|s| s.label("le") == Some("+Inf"))
            .unwrap();
        assert_eq!(inf.value, 144_320.0);
        assert_eq!(
            inf.labels,
            labels(&[("handler", "/api"), ("method", "get"), ("le", "+Inf")])
        );
        let errors = read
            .samples
            .iter()
            .find(|s| s.name == "http_requests_total" && s.label("code") == Some("500"))
            .unwrap();
        assert_eq!(errors.value, 3.0);
    }

    #[test]
    fn the_python_client_exposition_reads_whole() {
        let read = all(PYTHON);
        assert_eq!(read.skipped, 0, "{read:?}");
        let served: Vec<f64> = read
            .samples
            .iter()
            .filter(|s| s.name == "http_requests_total")
            .map(|s| s.value)
            .collect();
        assert_eq!(served, [1027.0, 2.0]);
        assert!(read
            .samples
            .iter()
            .any(|s| s.name == "http_requests_created" && s.value > 1.7e9));
    }

    #[test]
    fn openmetrics_timestamps_and_exemplars_are_passed_over_and_eof_ends_it() {
        let read = all(OPENMETRICS);
        assert_eq!(read.skipped, 0, "{read:?}");
        let names: Vec<(&str, f64)> = read
            .samples
            .iter()
            .map(|s| (s.name.as_str(), s.value))
            .collect();
        assert_eq!(
            names,
            [
                ("http_requests_total", 1027.0),
                ("http_requests_total", 3.0),
                ("http_requests_created", 1_520_430_000.123),
                ("http_request_duration_seconds_bucket", 8.0),
                ("http_request_duration_seconds_bucket", 10.0),
            ]
        );
    }

    #[test]
    fn escaped_label_values_are_undone() {
        // The exposition format's own example.
        let text = r#"msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9"#;
        let read = all(text);
        assert_eq!(read.skipped, 0, "{read:?}");
        let sample = &read.samples[0];
        assert_eq!(sample.label("path"), Some(r"C:\DIR\FILE.TXT"));
        assert_eq!(
            sample.label("error"),
            Some("Cannot find file:\n\"FILE.TXT\"")
        );
        assert_eq!(sample.value, 1_458_255_915.0);
        // Braces, commas and `=` inside a value are the value's.
        let read = all(r##"x{a="}{,=",b="#"} 1"##);
        assert_eq!(read.samples[0].label("a"), Some("}{,="));
        assert_eq!(read.samples[0].label("b"), Some("#"));
    }

    #[test]
    fn special_values_timestamps_blanks_and_crlf_read() {
        let text =
            "a NaN\r\nb +Inf\nc -Inf 1395066363000\n  d{ x = \"1\" , } 2e-3\t17\ne{} 5\nf:g 1\n";
        let read = all(text);
        assert_eq!(read.skipped, 0, "{read:?}");
        let values: Vec<f64> = read.samples.iter().map(|s| s.value).collect();
        assert!(values[0].is_nan());
        assert_eq!(
            values[1..],
            [f64::INFINITY, f64::NEG_INFINITY, 0.002, 5.0, 1.0]
        );
        assert_eq!(read.samples[3].labels, labels(&[("x", "1")]));
        assert_eq!(read.samples[5].name, "f:g");
    }

    #[test]
    fn bad_lines_are_skipped_and_counted_never_fatal() {
        let bad = [
            "",                          // (blank: not counted)
            "9metric 1",                 // a name cannot start with a digit
            "metric",                    // no value
            "metric one",                // not a number
            "metric{a=\"1\" 1",          // label set not closed
            "metric{a=1} 1",             // value not quoted
            "metric{a=\"\\x\"} 1",       // unknown escape
            "metric{a=\"1} 1",           // value not closed
            "metric{a=\"1\",a=\"2\"} 1", // label twice
            "metric{=\"1\"} 1",          // label name missing
            "metric 1 2 3",              // more than a timestamp
            "metric 1 soon",             // timestamp not a number
            "{\"quoted.name\"} 1",       // quoted name
            "metric+1",                  // no blank between the name and the value
            "\u{0}\u{ffff} \\ \" {",     // noise
            "good 1",
            "good 2", // the same series again
        ];
        let read = all(&bad.join("\n"));
        assert_eq!(read.samples.len(), 1, "{read:?}");
        assert_eq!(read.samples[0].value, 1.0);
        assert_eq!(read.skipped, bad.len() - 2, "{read:?}");
        assert_eq!(read.first_skipped, Some((2, "no metric name")));
    }

    #[test]
    fn only_the_names_asked_for_are_kept() {
        let read = parse(GO, |name| name == "http_requests_total");
        assert_eq!(read.samples.len(), 2);
        assert_eq!(read.skipped, 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap fuzz: every prefix and a few mangled copies of the samples.
        for text in [GO, PYTHON, OPENMETRICS] {
            for end in (0..text.len()).filter(|i| text.is_char_boundary(*i)) {
                let _ = all(&text[..end]);
            }
            let swapped: String = text
                .chars()
                .map(|c| match c {
                    '"' => '\\',
                    '\\' => '"',
                    '{' => '}',
                    other => other,
                })
                .collect();
            let _ = all(&swapped);
        }
    }
}
