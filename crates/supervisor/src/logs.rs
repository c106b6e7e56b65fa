//! Reading instance log files (`<log_dir>/<version>-<n>.log`): stdout and stderr of every
//! process the instance ran, each start preceded by a `--- cutover: starting …` marker line.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// At most this much of the file's end is read for a tail: a failure message needs a few
/// lines, not a multi-gigabyte log.
const TAIL_BYTES: u64 = 64 * 1024;

/// The last `n` lines the instance's processes wrote, oldest first, without cutover's own
/// marker lines; each line cut to 200 characters. Empty when the file does not exist.
pub fn tail(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // cut in the middle
    }
    let kept: Vec<String> = lines
        .into_iter()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with(MARKER))
        .map(|l| match l.char_indices().nth(200) {
            Some((i, _)) => format!("{}…", &l[..i]),
            None => l.to_string(),
        })
        .collect();
    Ok(kept[kept.len().saturating_sub(n)..].to_vec())
}

/// The first words of the line written before each process start.
pub(crate) const MARKER: &str = "--- cutover: starting ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_skips_markers_and_bounds_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v1-0.log");
        assert!(tail(&p, 3).unwrap().is_empty());
        let long = "x".repeat(300);
        std::fs::write(
            &p,
            format!("--- cutover: starting v1-0 on 127.0.0.1:1 ---\na\nb\n\n{long}\n--- cutover: starting v1-0 on 127.0.0.1:1 ---\nc\n"),
        )
        .unwrap();
        let t = tail(&p, 3).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0], "b");
        assert_eq!(t[1].chars().count(), 201);
        assert_eq!(t[2], "c");
        assert_eq!(tail(&p, 10).unwrap().len(), 4);
    }

    #[test]
    fn tail_reads_only_the_end_of_a_big_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v1-0.log");
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&p, text).unwrap();
        assert_eq!(tail(&p, 2).unwrap(), ["line 19998", "line 19999"]);
    }
}
