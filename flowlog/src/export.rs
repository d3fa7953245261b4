//! Exporters to existing log stacks. [`JsonLines`]: one JSON object per record, appended to a
//! file that rotates by size (`flows.jsonl` -> `flows.jsonl.1` -> ... -> `flows.jsonl.N`, the
//! oldest dropped), the shape log shippers (Fluent Bit, Vector, Promtail) tail.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write as _};
use std::path::{Path, PathBuf};

use crate::record::FlowRecord;

/// A JSON-lines file with size-based rotation.
#[derive(Debug)]
pub struct JsonLines {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    out: BufWriter<File>,
    size: u64,
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl JsonLines {
    /// Appends to `path`, rotating when it would grow past `max_bytes` and keeping `keep`
    /// rotated files.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            keep,
            out: BufWriter::new(file),
            size,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(rotated(&self.path, self.keep));
            for n in (1..self.keep).rev() {
                let from = rotated(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.out = BufWriter::new(file);
        self.size = 0;
        Ok(())
    }

    /// Writes records, one line each, and flushes them to the file.
    pub fn write(&mut self, records: &[FlowRecord]) -> io::Result<()> {
        for r in records {
            let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
            line.push(b'\n');
            if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
                self.rotate()?;
            }
            self.out.write_all(&line)?;
            self.size += line.len() as u64;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{FlowEnd, Point, Verdict};

    fn record(i: i64) -> FlowRecord {
        FlowRecord {
            first_seen_ms: i,
            last_seen_ms: i,
            node: "n1".into(),
            point: Point::FromPod,
            protocol: 6,
            src: FlowEnd {
                ip: Some("10.0.0.1".parse().unwrap()),
                port: 40000,
                ..FlowEnd::default()
            },
            dst: FlowEnd::default(),
            verdict: Verdict::Forwarded,
            drop_reason: 0,
            egress_rule: None,
            ingress_rule: None,
            tcp_flags: 2,
            packets_forward: 1,
            bytes_forward: 60,
            packets_reverse: 0,
            bytes_reverse: 0,
            is_reply: false,
            count: 1,
        }
    }

    #[test]
    fn lines_rotate_by_size_and_every_record_is_in_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let mut j = JsonLines::open(&path, 4096, 3).unwrap();
        let records: Vec<_> = (0..200).map(record).collect();
        j.write(&records).unwrap();
        let mut read = Vec::new();
        for p in [
            rotated(&path, 3),
            rotated(&path, 2),
            rotated(&path, 1),
            path.clone(),
        ] {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            assert!(
                text.len() as u64 <= 4096,
                "{} is {} bytes",
                p.display(),
                text.len()
            );
            for line in text.lines() {
                read.push(serde_json::from_str::<FlowRecord>(line).unwrap());
            }
        }
        assert!(!rotated(&path, 4).exists(), "only `keep` rotated files");
        // The newest records, in order, with none missing between the oldest kept and the last.
        let first = read[0].first_seen_ms;
        assert_eq!(read, (first..200).map(record).collect::<Vec<_>>());
        assert!(first > 0, "the oldest were rotated away");
    }
}
