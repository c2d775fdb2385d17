//! A target's PDUs in the full feature phase: a session with reads, a
//! write, a TEST UNIT READY, a ping and maybe an abort or a LUN reset in
//! flight receives whatever the input decodes to. No input may panic
//! the session, and what it asks the driver to do must stay inside the
//! commands' buffers: read data within the read's expected length,
//! Data-Out ranges within the write's.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use umpath::iscsi::digest::Digests;
use umpath::iscsi::pdu::{frame_len, lun_from_number, Pdu, BHS_LEN};
use umpath::iscsi::session::{Command, Direction, Event, Send, Session, SessionParams};

/// The expected length and direction of each command sent, by ITT.
type Sent = HashMap<u32, (Direction, u32)>;

fn check_sends(sends: &[Send], sent: &Sent) {
    for s in sends {
        match s {
            Send::Command { header, immediate } => {
                let (dir, len) = sent[&header.itt];
                assert!(immediate.is_empty() || dir == Direction::Write);
                assert!(immediate.start <= immediate.end && immediate.end <= len);
            }
            Send::DataOut { header, range } => {
                let (dir, len) = sent[&header.itt];
                assert_eq!(
                    dir,
                    Direction::Write,
                    "Data-Out for a command that is not a write"
                );
                assert!(
                    range.start <= range.end && range.end <= len,
                    "{range:?} of {len}"
                );
            }
            Send::Pdu(_) => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, mut rest)) = data.split_at_checked(4) else {
        return;
    };
    let params = SessionParams {
        max_send_segment: 512 << (head[0] & 7),
        max_burst: 512 << (head[1] & 7),
        first_burst: 512 << ((head[1] >> 4) & 7),
        immediate_data: head[2] & 1 != 0,
        initial_r2t: head[2] & 2 != 0,
    };
    let lun = lun_from_number(u16::from(head[2] >> 4));
    let mut s = Session::new(params, 1, 1, 1 + u32::from(head[3] >> 2));
    let mut sent = Sent::new();
    let cmds = [
        (Direction::Read, 16_384),
        (Direction::Write, 20_000),
        (Direction::None, 0),
        (Direction::Read, 4_096),
    ];
    for (dir, len) in cmds {
        let cmd = Command {
            lun,
            cdb: [0; 16],
            dir,
            len,
        };
        if let Some((itt, sends)) = s.submit(cmd) {
            sent.insert(itt, (dir, len));
            check_sends(&sends, &sent);
        }
    }
    let _ = s.ping();
    if head[3] & 1 != 0 {
        if let Some(&itt) = sent.keys().min() {
            let _ = s.abort(itt);
        }
    }
    if head[3] & 2 != 0 {
        let _ = s.lun_reset(lun);
    }
    let digests = Digests::default();
    while let Some(bhs) = rest.first_chunk::<BHS_LEN>() {
        let Ok(n) = frame_len(bhs, digests, 1 << 20) else {
            return;
        };
        let Some(frame) = rest.get(..n) else {
            return;
        };
        rest = &rest[n..];
        let Ok(pdu) = Pdu::decode(frame, digests) else {
            return;
        };
        let Ok(events) = s.receive(pdu) else {
            // A broken protocol ends the connection: nothing more is read.
            return;
        };
        for e in &events {
            match e {
                Event::Data { itt, offset, data } => {
                    let (dir, len) = sent[itt];
                    assert_eq!(
                        dir,
                        Direction::Read,
                        "read data for a command that is not a read"
                    );
                    assert!(u64::from(*offset) + data.len() as u64 <= u64::from(len));
                }
                Event::Send(send) => check_sends(std::slice::from_ref(send), &sent),
                _ => {}
            }
        }
        assert!(s.in_flight() <= sent.len());
    }
});
