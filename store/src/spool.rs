//! The local spool: where batches go while the store is down or slow, so that no
//! usage record is lost, and whence they are replayed in order once it answers.
//!
//! A folder of segment files `<id>.seg` (ids ascending, zero-padded). Each record is
//! one frame: `u32` little-endian payload length, `u32` little-endian CRC-32 of the
//! payload, then the payload (the record as JSON). Every append is fsync'ed before
//! it returns, and a new segment's folder entry too, so what `append` accepted
//! survives a SIGKILL or power loss. A crash can only tear the last frame being
//! written; opening the spool cuts such a tail off.
//!
//! Replay reads from the oldest segment. A fully replayed segment is deleted; after a
//! crash the replayed part of the oldest segment is replayed again, which the
//! store's idempotent inserts (by request id) turn into no-ops: exactly once in the
//! database. Segment size bounds that repeated work.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{SpoolError, UsageRecord};

const HEADER: usize = 8;
/// A frame larger than this is damage, not a record (records are a few hundred bytes).
const MAX_FRAME: usize = 16 << 20;

#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    /// Bytes of valid frames.
    len: u64,
}

/// Where a [`Spool::read`] stopped; pass it to [`Spool::consume`] once the records
/// are safely in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolPosition {
    segment: u64,
    offset: u64,
}

/// An append-only, size-bounded, crash-safe queue of usage records on disk.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Oldest first; the last one takes appends.
    segments: VecDeque<Segment>,
    /// The newest segment, open for appending.
    head: Option<File>,
    /// Offset of the next unreplayed frame in the oldest segment.
    read_offset: u64,
    /// Bytes of all segment files.
    bytes: u64,
}

impl Spool {
    /// Opens the spool in `dir` (creating it), cutting off a torn tail left by a
    /// crash. `max_bytes` bounds the files in total; a segment is rotated once it
    /// holds `segment_bytes`.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64, segment_bytes: u64) -> Result<Spool, SpoolError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| SpoolError::io(&dir, e))?;
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| SpoolError::io(&dir, e))? {
            let entry = entry.map_err(|e| SpoolError::io(&dir, e))?;
            let name = entry.file_name();
            let id = name.to_str().and_then(|n| n.strip_suffix(".seg")).and_then(|n| n.parse::<u64>().ok());
            ids.extend(id);
        }
        ids.sort_unstable();
        let mut segments = VecDeque::with_capacity(ids.len());
        let mut bytes = 0;
        for id in ids {
            let path = segment_path(&dir, id);
            let len = valid_length(&path)?;
            bytes += len;
            segments.push_back(Segment { id, path, len });
        }
        Ok(Spool { dir, max_bytes, segment_bytes, segments, head: None, read_offset: 0, bytes })
    }

    /// Bytes the spool's files take.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether every spooled record has been consumed.
    pub fn is_empty(&self) -> bool {
        match self.segments.len() {
            0 => true,
            1 => self.segments.front().is_some_and(|s| s.len <= self.read_offset),
            _ => false,
        }
    }

    /// Appends records durably (fsync'ed) as one write, or refuses them all with
    /// [`SpoolError::Full`] when they would exceed the bound.
    pub fn append(&mut self, records: &[UsageRecord]) -> Result<(), SpoolError> {
        let mut buf = Vec::with_capacity(records.len() * 512);
        for r in records {
            let payload = serde_json::to_vec(r)?;
            let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            buf.extend_from_slice(&payload);
        }
        let size = buf.len() as u64;
        if self.bytes + size > self.max_bytes {
            return Err(SpoolError::Full { bytes: self.bytes, max: self.max_bytes });
        }
        let rotate = self.segments.back().is_none_or(|s| s.len > 0 && s.len + size > self.segment_bytes);
        if rotate {
            self.new_segment()?;
        }
        if self.head.is_none() {
            // A segment found at open: reopen it for appending.
            let segment = self.segments.back().ok_or_else(|| no_segment(&self.dir))?;
            let file =
                OpenOptions::new().append(true).open(&segment.path).map_err(|e| SpoolError::io(&segment.path, e))?;
            self.head = Some(file);
        }
        let (Some(file), Some(segment)) = (self.head.as_mut(), self.segments.back_mut()) else {
            return Err(no_segment(&self.dir));
        };
        // A failed write may leave a partial frame: the length covers only whole
        // batches, and the next open truncates to the valid length.
        file.write_all(&buf).map_err(|e| SpoolError::io(&segment.path, e))?;
        file.sync_data().map_err(|e| SpoolError::io(&segment.path, e))?;
        segment.len += size;
        self.bytes += size;
        Ok(())
    }

    fn new_segment(&mut self) -> Result<(), SpoolError> {
        let id = self.segments.back().map_or(1, |s| s.id + 1);
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| SpoolError::io(&path, e))?;
        // The new file's name must survive a crash too.
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| SpoolError::io(&self.dir, e))?;
        // Keep the size of what is already in it (a torn tail cut at open).
        let len = file.metadata().map_err(|e| SpoolError::io(&path, e))?.len();
        self.segments.push_back(Segment { id, path, len });
        self.head = Some(file);
        Ok(())
    }

    /// Up to `max` of the oldest unconsumed records (never across a segment
    /// boundary), in the order they were appended, and the position after them.
    pub fn read(&mut self, max: usize) -> Result<(Vec<UsageRecord>, SpoolPosition), SpoolError> {
        // Drop fully consumed segments first (e.g. after a crash mid-delete).
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.len <= self.read_offset) {
            self.delete_oldest()?;
        }
        let Some(segment) = self.segments.front() else {
            return Ok((Vec::new(), SpoolPosition { segment: 0, offset: 0 }));
        };
        let mut file = File::open(&segment.path).map_err(|e| SpoolError::io(&segment.path, e))?;
        file.seek(SeekFrom::Start(self.read_offset)).map_err(|e| SpoolError::io(&segment.path, e))?;
        let mut reader = BufReader::new(file.take(segment.len - self.read_offset.min(segment.len)));
        let mut records = Vec::new();
        let mut offset = self.read_offset;
        while records.len() < max {
            match read_frame(&mut reader).map_err(|e| SpoolError::io(&segment.path, e))? {
                Some((payload, size)) => {
                    // Frames passed their checksum; a record that no longer parses
                    // (a format change) is skipped loudly rather than blocking replay.
                    match serde_json::from_slice(&payload) {
                        Ok(r) => records.push(r),
                        Err(err) => tracing::error!(path = %segment.path.display(), offset, %err,
                            "skipping an unreadable spooled usage record"),
                    }
                    offset += size;
                }
                None => break,
            }
        }
        Ok((records, SpoolPosition { segment: segment.id, offset }))
    }

    /// Marks everything up to `position` as stored; deletes finished segments.
    pub fn consume(&mut self, position: SpoolPosition) -> Result<(), SpoolError> {
        if self.segments.front().is_none_or(|s| s.id != position.segment) {
            return Ok(());
        }
        self.read_offset = position.offset;
        if self.segments.front().is_some_and(|s| s.len <= self.read_offset) {
            self.delete_oldest()?;
        }
        Ok(())
    }

    fn delete_oldest(&mut self) -> Result<(), SpoolError> {
        let Some(segment) = self.segments.pop_front() else { return Ok(()) };
        if self.segments.is_empty() {
            self.head = None;
        }
        std::fs::remove_file(&segment.path).map_err(|e| SpoolError::io(&segment.path, e))?;
        self.bytes -= segment.len;
        self.read_offset = 0;
        Ok(())
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn no_segment(dir: &Path) -> SpoolError {
    SpoolError::io(dir, std::io::Error::other("no segment to append to"))
}

/// One frame: its payload and its size on disk, or `None` at the end (a clean end,
/// a torn tail or a checksum mismatch: nothing after such a frame is trusted).
fn read_frame(reader: &mut impl Read) -> std::io::Result<Option<(Vec<u8>, u64)>> {
    let mut header = [0u8; HEADER];
    if !read_full(reader, &mut header)? {
        return Ok(None);
    }
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if len > MAX_FRAME {
        return Ok(None);
    }
    let mut payload = vec![0; len];
    if !read_full(reader, &mut payload)? || crc32fast::hash(&payload) != crc {
        return Ok(None);
    }
    Ok(Some((payload, (HEADER + len) as u64)))
}

/// Fills `buf`, or returns false when the input ends first.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The length of the valid frames at the start of a segment; truncates the file to
/// it when something follows (a torn or damaged tail).
fn valid_length(path: &Path) -> Result<u64, SpoolError> {
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| SpoolError::io(path, e))?;
    let total = file.metadata().map_err(|e| SpoolError::io(path, e))?.len();
    let mut reader = BufReader::new(&file);
    let mut valid = 0;
    while let Some((_, size)) = read_frame(&mut reader).map_err(|e| SpoolError::io(path, e))? {
        valid += size;
    }
    if valid < total {
        tracing::warn!(path = %path.display(), valid, discarded = total - valid,
            "cutting a torn or damaged tail off a spool segment");
        file.set_len(valid).map_err(|e| SpoolError::io(path, e))?;
        file.sync_all().map_err(|e| SpoolError::io(path, e))?;
    }
    Ok(valid)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    fn records(range: std::ops::Range<u32>) -> Vec<UsageRecord> {
        range.map(|i| UsageRecord { request_id: format!("r{i}"), ..sample() }).collect()
    }

    fn drain(spool: &mut Spool, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let (batch, pos) = spool.read(max).unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch.into_iter().map(|r| r.request_id));
            spool.consume(pos).unwrap();
        }
    }

    #[test]
    fn replays_in_order_across_segments_and_deletes_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20, 2_000).unwrap();
        for chunk in records(0..30).chunks(4) {
            spool.append(chunk).unwrap();
        }
        assert!(spool.segments.len() > 2, "small segments rotate");
        let ids = drain(&mut spool, 7);
        assert_eq!(ids, records(0..30).into_iter().map(|r| r.request_id).collect::<Vec<_>>());
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Appending after a full drain starts a fresh segment.
        spool.append(&records(30..31)).unwrap();
        assert_eq!(drain(&mut spool, 10), vec!["r30"]);
    }

    #[test]
    fn refuses_what_exceeds_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 3_000, 1 << 20).unwrap();
        spool.append(&records(0..4)).unwrap();
        let before = spool.bytes();
        assert!(matches!(spool.append(&records(4..100)), Err(SpoolError::Full { .. })));
        assert_eq!(spool.bytes(), before);
        assert_eq!(drain(&mut spool, 100).len(), 4);
    }

    #[test]
    fn reopening_cuts_a_torn_tail_and_replays_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        spool.append(&records(0..5)).unwrap();
        let (_, pos) = spool.read(2).unwrap();
        spool.consume(pos).unwrap();
        let path = spool.segments[0].path.clone();
        drop(spool);
        // A crash mid-append: half a frame at the end.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
        drop(f);
        let mut spool = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        // The consumed prefix comes again (the store skips it), nothing is lost.
        assert_eq!(drain(&mut spool, 100), vec!["r0", "r1", "r2", "r3", "r4"]);
        spool.append(&records(5..6)).unwrap();
        assert_eq!(drain(&mut spool, 100), vec!["r5"]);
    }

    #[test]
    fn a_damaged_frame_ends_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        spool.append(&records(0..3)).unwrap();
        let path = spool.segments[0].path.clone();
        drop(spool);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(drain(&mut spool, 100), vec!["r0", "r1"]);
    }
}
