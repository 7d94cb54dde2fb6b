//! The log's contract: what was appended and synced comes back after a
//! reopen, torn tails are cut, holes are refused, truncate and purge stick.

use std::io::Write;

use cairn_proto::etcdserverpb::PutRequest;
use openraft::{CommittedLeaderId, EntryPayload, RaftLogId};

use super::record::RECORD_HEADER;
use super::*;
use crate::command::{Command, Proposal, Proto};

fn entry(term: u64, index: u64) -> Entry {
    let req = Proposal::new(
        None,
        Command::Put(Proto(PutRequest {
            key: format!("k{index}").into_bytes(),
            value: vec![b'v'; 40],
            ..Default::default()
        })),
    );
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(req),
    }
}

fn entries(term: u64, range: std::ops::Range<u64>) -> Vec<Entry> {
    range.map(|i| entry(term, i)).collect()
}

fn ids(es: &[Entry]) -> Vec<(u64, u64)> {
    es.iter()
        .map(|e| (e.get_log_id().leader_id.term, e.get_log_id().index))
        .collect()
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn appended_entries_survive_a_reopen_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open_with(dir.path(), None, 300).unwrap();
    for i in 0..20 {
        wal.append(&entries(1, i * 3..i * 3 + 3)).unwrap();
        wal.sync().unwrap();
    }
    assert!(
        segment_files(dir.path()).len() > 5,
        "small segments roll over"
    );
    assert_eq!(ids(&wal.read(10, 14).unwrap()), ids(&entries(1, 10..14)));
    drop(wal);
    let wal = Wal::open_with(dir.path(), None, 300).unwrap();
    assert_eq!(wal.last_log_id().unwrap().index, 59);
    let all = wal.read(0, 100).unwrap();
    assert_eq!(ids(&all), ids(&entries(1, 0..60)));
    let Some(EntryPayload::Normal(req)) = all.get(7).map(|e| &e.payload) else {
        panic!("entry 7 lost its payload")
    };
    assert!(matches!(req.command(), Command::Put(Proto(p)) if p.key == b"k7"));
    // Appending goes on where it stopped.
    wal.append(&entries(1, 60..61)).unwrap();
    assert!(wal.append(&entries(1, 62..63)).is_err(), "a gap is refused");
}

#[test]
fn a_torn_tail_is_cut_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None).unwrap();
    wal.append(&entries(1, 0..5)).unwrap();
    wal.sync().unwrap();
    let seg = dir.path().join(segment_name(0));
    let good = std::fs::metadata(&seg).unwrap().len();
    drop(wal);
    // Half a record, as a crash during a write leaves it.
    let (buf, _) = encode(&entries(1, 5..6)).unwrap();
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&buf[..buf.len() / 2]).unwrap();
    drop(f);
    let wal = Wal::open(dir.path(), None).unwrap();
    assert_eq!(wal.last_log_id().unwrap().index, 4);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good);
    wal.append(&entries(1, 5..7)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), None).unwrap();
    assert_eq!(ids(&wal.read(0, 10).unwrap()), ids(&entries(1, 0..7)));
}

#[test]
fn a_corrupt_record_before_the_end_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open_with(dir.path(), None, 200).unwrap();
    for i in 0..10 {
        wal.append(&entries(1, i..i + 1)).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    let first = dir.path().join(segment_name(0));
    let mut data = std::fs::read(&first).unwrap();
    data[SEGMENT_HEADER + RECORD_HEADER + 3] ^= 0xff;
    std::fs::write(&first, data).unwrap();
    let err = Wal::open_with(dir.path(), None, 200)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("hole"), "{err}");
}

#[test]
fn truncate_replaces_a_suffix_durably() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open_with(dir.path(), None, 300).unwrap();
    wal.append(&entries(1, 0..20)).unwrap();
    wal.append(&entries(1, 20..40)).unwrap();
    wal.sync().unwrap();
    wal.truncate(15).unwrap();
    assert_eq!(wal.last_log_id().unwrap().index, 14);
    wal.append(&entries(2, 15..18)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open_with(dir.path(), None, 300).unwrap();
    let mut want = entries(1, 0..15);
    want.extend(entries(2, 15..18));
    assert_eq!(ids(&wal.read(0, 100).unwrap()), ids(&want));
}

#[test]
fn purge_deletes_whole_segments_and_reopen_skips_purged_entries() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open_with(dir.path(), None, 300).unwrap();
    for i in 0..10 {
        wal.append(&entries(1, i * 4..i * 4 + 4)).unwrap();
    }
    wal.sync().unwrap();
    let before = segment_files(dir.path()).len();
    wal.purge(21).unwrap();
    assert!(segment_files(dir.path()).len() < before);
    assert_eq!(ids(&wal.read(0, 25).unwrap()), ids(&entries(1, 22..25)));
    drop(wal);
    let wal = Wal::open_with(dir.path(), Some(21), 300).unwrap();
    assert_eq!(ids(&wal.read(0, 100).unwrap()), ids(&entries(1, 22..40)));
    // Purging past the end empties the log; it then restarts further on.
    wal.purge(50).unwrap();
    assert!(wal.last_log_id().is_none());
    assert!(segment_files(dir.path()).is_empty());
    wal.append(&entries(3, 51..53)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open_with(dir.path(), Some(50), 300).unwrap();
    assert_eq!(ids(&wal.read(0, 100).unwrap()), ids(&entries(3, 51..53)));
    drop(wal);
    let err = Wal::open_with(dir.path(), Some(40), 300)
        .err()
        .expect("a hole");
    assert!(err.to_string().contains("purged only up to 40"), "{err}");
}

#[test]
fn a_bad_record_with_valid_ones_after_it_is_corruption_not_a_tail() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None).unwrap();
    wal.append(&entries(1, 0..5)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    // Flip a payload byte of the third record: its length still places the
    // fourth, which is intact, so this is not a torn write.
    let seg = dir.path().join(segment_name(0));
    let (buf, lens) = encode(&entries(1, 0..5)).unwrap();
    let third = SEGMENT_HEADER + (lens[0].0 + lens[1].0) as usize;
    let mut data = std::fs::read(&seg).unwrap();
    assert_eq!(&data[SEGMENT_HEADER..], &buf[..]);
    data[third + RECORD_HEADER + 5] ^= 0xff;
    std::fs::write(&seg, data).unwrap();
    let err = Wal::open(dir.path(), None).err().expect("refused");
    assert!(
        err.to_string().contains("followed by valid records"),
        "{err}"
    );
}

#[test]
fn a_tear_at_a_segment_roll_is_a_tail() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open_with(dir.path(), None, 300).unwrap();
    for i in 0..6 {
        wal.append(&entries(1, i * 2..i * 2 + 2)).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    // A crash while the second-to-last segment's last write and the next
    // segment's first write were both unsynced: the former torn, the latter
    // garbage.
    let second_last = dir.path().join(&files[files.len() - 2]);
    let len = std::fs::metadata(&second_last).unwrap().len();
    let f = OpenOptions::new().write(true).open(&second_last).unwrap();
    f.set_len(len - 7).unwrap();
    std::fs::write(dir.path().join(&files[files.len() - 1]), [0u8; 40]).unwrap();
    let wal = Wal::open_with(dir.path(), None, 300).unwrap();
    let last = wal.last_log_id().unwrap().index;
    assert_eq!(
        ids(&wal.read(0, 100).unwrap()),
        ids(&entries(1, 0..last + 1)),
        "a prefix of the log survives"
    );
    assert_eq!(
        segment_files(dir.path()).len(),
        files.len() - 1,
        "the garbage segment went"
    );
    // And the log goes on after it.
    wal.append(&entries(1, last + 1..last + 3)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open_with(dir.path(), None, 300).unwrap();
    assert_eq!(wal.last_log_id().unwrap().index, last + 2);
}

#[test]
fn a_valid_segment_after_a_torn_one_is_a_hole() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open_with(dir.path(), None, 300).unwrap();
    for i in 0..6 {
        wal.append(&entries(1, i * 2..i * 2 + 2)).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    let files = segment_files(dir.path());
    let second_last = dir.path().join(&files[files.len() - 2]);
    let len = std::fs::metadata(&second_last).unwrap().len();
    let f = OpenOptions::new().write(true).open(&second_last).unwrap();
    f.set_len(len - 7).unwrap();
    let err = Wal::open_with(dir.path(), None, 300)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("hole"), "{err}");
}

#[test]
fn segments_carry_a_format_version_and_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None).unwrap();
    wal.append(&entries(1, 0..3)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let seg = dir.path().join(segment_name(0));
    let data = std::fs::read(&seg).unwrap();
    assert_eq!(&data[..8], b"CAIRNWAL");
    // A later format version is refused, not misread.
    let mut newer = data.clone();
    newer[8] = 2;
    std::fs::write(&seg, &newer).unwrap();
    let err = Wal::open(dir.path(), None).err().expect("refused");
    assert!(err.to_string().contains("format version 2"), "{err}");
    // So is a file that is not a segment at all.
    std::fs::write(&seg, b"something else entirely").unwrap();
    let err = Wal::open(dir.path(), None).err().expect("refused");
    assert!(err.to_string().contains("not a Cairn WAL segment"), "{err}");
}

#[test]
fn a_record_with_a_valid_checksum_that_does_not_decode_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None).unwrap();
    wal.append(&entries(1, 0..2)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let seg = dir.path().join(segment_name(0));
    let mut data = std::fs::read(&seg).unwrap();
    // A last record of garbage with a correct length and checksum: what a
    // different build might have written, never a torn write.
    let payload = [0xffu8; 5];
    data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    data.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    data.extend_from_slice(&payload);
    std::fs::write(&seg, &data).unwrap();
    let err = Wal::open(dir.path(), None).err().expect("refused");
    assert!(err.to_string().contains("valid checksum"), "{err}");
}

#[test]
fn reading_past_the_end_is_empty_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None).unwrap();
    wal.append(&entries(1, 5..8)).unwrap();
    assert!(wal.read(20, 30).unwrap().is_empty());
    assert!(wal.read(9, 8).unwrap().is_empty());
    assert_eq!(wal.read(0, 100).unwrap().len(), 3);
}

#[test]
fn a_tail_of_zeros_is_a_torn_write() {
    // What a power loss often leaves: the file grew, the data never landed.
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None).unwrap();
    wal.append(&entries(1, 0..4)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let seg = dir.path().join(segment_name(0));
    let good = std::fs::metadata(&seg).unwrap().len();
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[0u8; 30]).unwrap();
    drop(f);
    let wal = Wal::open(dir.path(), None).unwrap();
    assert_eq!(wal.last_log_id().unwrap().index, 3);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good);
}

/// Any bytes: the record decoder answers Entry, Bad or Undecodable, never
/// panics, and reads a payload only within the buffer. The checksum is fixed
/// up on half the cases so that the entry decoder itself sees mutated input.
#[test]
fn record_decoding_survives_any_input() {
    let (valid, _) = record::encode(&entries(3, 1..4)).unwrap();
    for (i, mut input) in crate::testing::mutations(&valid, 20_000, 11)
        .into_iter()
        .enumerate()
    {
        if i % 2 == 0 && input.len() >= RECORD_HEADER {
            let len = u32::from_le_bytes(input[..4].try_into().unwrap()) as usize;
            if let Some(payload) = input.get(RECORD_HEADER..RECORD_HEADER + len) {
                let crc = crc32fast::hash(payload);
                input[4..8].copy_from_slice(&crc.to_le_bytes());
            }
        }
        if let record::Record::Entry(_, n) = record::decode(&input) {
            assert!(n <= input.len(), "case {i}: a record longer than its input");
        }
        let _ = record::valid_record_follows(&input, 0);
    }
}
