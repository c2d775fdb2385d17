//! Targets that misbehave (issue 14, "Bad input"): a scripted fake
//! target on loopback, speaking just enough iSCSI (through umpath's own
//! PDU codec) to log in and then do the wrong thing. Each time the
//! connection ends with a reason and nothing panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use umpath::config::Portal;
use umpath::iscsi::chap::Secret;
use umpath::iscsi::digest::Digests;
use umpath::iscsi::login::{ChapCredentials, OperationalParams};
use umpath::iscsi::pdu::{self, DataIn, LoginResponse, Pdu, R2t, Stage, BHS_LEN};
use umpath::iscsi::session::{Command, Direction};
use umpath::iscsi::text;
use umpath::transport::iscsi::conn::{CmdError, Conn, LoginTarget};

const IQN: &str = "iqn.2026-11.com.example:fake";

fn read_pdu(s: &mut TcpStream) -> Option<Pdu> {
    let mut bhs = [0u8; BHS_LEN];
    s.read_exact(&mut bhs).ok()?;
    let len = pdu::frame_len(&bhs, Digests::default(), 1 << 24).ok()?;
    let mut buf = vec![0u8; len];
    buf[..BHS_LEN].copy_from_slice(&bhs);
    s.read_exact(&mut buf[BHS_LEN..]).ok()?;
    Pdu::decode(&buf, Digests::default()).ok()
}

fn send(s: &mut TcpStream, p: Pdu) {
    let _ = s.write_all(&p.encode(Digests::default()));
}

fn response(req: &pdu::LoginRequest, csg: Stage, nsg: Stage, keys: &[(&str, &str)]) -> Pdu {
    Pdu::LoginResponse(LoginResponse {
        transit: true,
        continue_flag: false,
        csg,
        nsg,
        version_max: 0,
        version_active: 0,
        isid: req.isid,
        tsih: if nsg == Stage::FullFeature { 1 } else { 0 },
        itt: req.itt,
        stat_sn: 0,
        exp_cmd_sn: req.cmd_sn,
        max_cmd_sn: req.cmd_sn.wrapping_add(32),
        status_class: 0,
        status_detail: 0,
        data: text::encode(keys),
    })
}

/// Answers a login without authentication (security, then operational
/// stage) up to the full feature phase.
fn login(s: &mut TcpStream) {
    loop {
        let Some(Pdu::LoginRequest(r)) = read_pdu(s) else {
            panic!("expected a Login Request")
        };
        match r.csg {
            Stage::Security => send(
                s,
                response(
                    &r,
                    Stage::Security,
                    Stage::Operational,
                    &[("AuthMethod", "None")],
                ),
            ),
            _ => {
                let keys = text::parse(&r.data).unwrap();
                let answers: Vec<(&str, &str)> = keys
                    .iter()
                    .filter_map(|(k, _)| {
                        let v = match k.as_str() {
                            "HeaderDigest" | "DataDigest" => "None",
                            "MaxRecvDataSegmentLength" => "65536",
                            "MaxBurstLength" => "262144",
                            "FirstBurstLength" => "65536",
                            "ImmediateData" | "DataPDUInOrder" | "DataSequenceInOrder" => "Yes",
                            "InitialR2T" => "Yes",
                            "MaxOutstandingR2T" | "MaxConnections" => "1",
                            "ErrorRecoveryLevel" => "0",
                            "DefaultTime2Wait" => "2",
                            "DefaultTime2Retain" => "20",
                            _ => return None,
                        };
                        Some((k.as_str(), v))
                    })
                    .collect();
                send(
                    s,
                    response(&r, Stage::Operational, Stage::FullFeature, &answers),
                );
                return;
            }
        }
    }
}

/// A fake target on a free loopback port running `script` on the first
/// connection.
fn fake(script: impl FnOnce(TcpStream) + Send + 'static) -> Portal {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            script(s);
        }
    });
    Portal {
        host: "127.0.0.1".into(),
        port,
    }
}

fn target(
    portal: Portal,
    chap: Option<ChapCredentials>,
    ping: (Duration, Duration),
) -> LoginTarget {
    LoginTarget {
        portal,
        target: Some(IQN.into()),
        initiator_name: "iqn.2026-11.org.umpath:test".into(),
        chap,
        params: OperationalParams::default(),
        ping,
        abort_wait: Duration::from_millis(400),
    }
}

const NO_PING: (Duration, Duration) = (Duration::from_secs(3600), Duration::from_secs(3600));

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A logged-in connection to `p` (no pings), with its runtime.
fn connected(p: Portal) -> (tokio::runtime::Runtime, Conn) {
    let rt = runtime();
    let c = Conn::connect(
        &target(p, None, NO_PING),
        rt.handle(),
        Duration::from_secs(5),
    )
    .unwrap();
    (rt, c)
}

/// Why a 512-byte read closed the connection (it must).
fn closed_by_read(c: &Conn) -> String {
    match c.command(read_cmd(512), None, Duration::from_secs(5)) {
        Err(CmdError::Closed(why)) => why,
        other => panic!("{other:?}"),
    }
}

/// A WRITE(16) of one 512-byte block to LUN 1.
fn write_cmd() -> Command {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x8a;
    cdb[13] = 1;
    Command {
        lun: pdu::lun_from_number(1),
        cdb,
        dir: Direction::Write,
        len: 512,
    }
}

/// Answers task management request `t` with `response`.
fn tmf_answer(s: &mut TcpStream, t: &pdu::TaskMgmtRequest, response: u8) {
    send(
        s,
        Pdu::TaskMgmtResponse(pdu::TaskMgmtResponse {
            response,
            itt: t.itt,
            stat_sn: 0,
            exp_cmd_sn: t.cmd_sn,
            max_cmd_sn: t.cmd_sn + 32,
        }),
    );
}

fn read_cmd(len: u32) -> Command {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88;
    cdb[13] = (len / 512) as u8;
    Command {
        lun: pdu::lun_from_number(1),
        cdb,
        dir: Direction::Read,
        len,
    }
}

/// A target that logs in and then answers nothing is found dead by the
/// NOP-Out pings, with no command outstanding.
#[test]
fn a_silent_target_is_found_by_the_pings() {
    let p = fake(|mut s| {
        login(&mut s);
        let mut sink = [0u8; 4096];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    });
    let rt = runtime();
    let ping = (Duration::from_millis(200), Duration::from_millis(500));
    let c = Conn::connect(&target(p, None, ping), rt.handle(), Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.closed().is_none() {
        assert!(Instant::now() < deadline, "the connection was not closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c.closed().unwrap().contains("NOP-Out"), "{:?}", c.closed());
}

/// A target that never finishes the login: the login times out.
#[test]
fn a_login_that_never_finishes_times_out() {
    let p = fake(|mut s| {
        let _ = read_pdu(&mut s);
        std::thread::sleep(Duration::from_secs(5));
    });
    let rt = runtime();
    let t0 = Instant::now();
    let e = Conn::connect(
        &target(p.clone(), None, NO_PING),
        rt.handle(),
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let msg = e.to_string();
    assert!(msg.contains(&p.to_string()), "{msg}");
}

/// An R2T for a read (data never asked for) ends the connection, and the
/// command with it.
#[test]
fn an_r2t_for_data_never_asked_for_fails_the_connection() {
    let p = fake(|mut s| {
        login(&mut s);
        let Some(Pdu::ScsiCommand(c)) = read_pdu(&mut s) else {
            return;
        };
        send(
            &mut s,
            Pdu::R2t(R2t {
                lun: c.lun,
                itt: c.itt,
                ttt: 7,
                exp_cmd_sn: c.cmd_sn + 1,
                max_cmd_sn: c.cmd_sn + 32,
                buffer_offset: 0,
                desired_length: 512,
                ..R2t::default()
            }),
        );
        std::thread::sleep(Duration::from_secs(2));
    });
    let (_rt, c) = connected(p);
    let why = closed_by_read(&c);
    assert!(why.contains("R2T") && why.contains("not a write"), "{why}");
}

/// A connection reset in the middle of Data-In fails the command.
#[test]
fn a_reset_in_the_middle_of_data_in_fails_the_command() {
    let p = fake(|mut s| {
        login(&mut s);
        let Some(Pdu::ScsiCommand(c)) = read_pdu(&mut s) else {
            return;
        };
        send(
            &mut s,
            Pdu::DataIn(DataIn {
                itt: c.itt,
                ttt: pdu::RESERVED_TAG,
                exp_cmd_sn: c.cmd_sn + 1,
                max_cmd_sn: c.cmd_sn + 32,
                buffer_offset: 0,
                data: vec![1u8; 4096],
                ..DataIn::default()
            }),
        );
        let _ = s.shutdown(Shutdown::Both);
    });
    let (_rt, c) = connected(p);
    let e = c
        .command(read_cmd(8192), None, Duration::from_secs(5))
        .unwrap_err();
    assert!(matches!(e, CmdError::Closed(_)), "{e:?}");
}

/// A PDU whose data segment is longer than we declared we take: the
/// connection ends before anything that size is read or allocated.
#[test]
fn an_oversized_pdu_fails_the_connection() {
    let p = fake(|mut s| {
        login(&mut s);
        let Some(Pdu::ScsiCommand(c)) = read_pdu(&mut s) else {
            return;
        };
        let mut bhs = Pdu::DataIn(DataIn {
            itt: c.itt,
            ..DataIn::default()
        })
        .encode_header(0);
        bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        let _ = s.write_all(&bhs);
        std::thread::sleep(Duration::from_secs(2));
    });
    let (_rt, c) = connected(p);
    let why = closed_by_read(&c);
    assert!(why.contains("bad PDU"), "{why}");
}

/// CHAP challenges that are too long, or empty, fail the login with a
/// reason; an odd number of hex digits is read with a leading zero.
#[test]
fn chap_challenges_of_odd_lengths() {
    for (challenge, ok) in [
        (format!("0x{}", "ab".repeat(2000)), false),
        ("0x".to_string(), false),
        ("0x123".to_string(), true),
    ] {
        let c2 = challenge.clone();
        let p = fake(move |mut s| {
            let Some(Pdu::LoginRequest(r)) = read_pdu(&mut s) else {
                return;
            };
            let mut resp = response(
                &r,
                Stage::Security,
                Stage::Operational,
                &[("AuthMethod", "CHAP")],
            );
            if let Pdu::LoginResponse(l) = &mut resp {
                l.transit = false;
            }
            send(&mut s, resp);
            let Some(Pdu::LoginRequest(r)) = read_pdu(&mut s) else {
                return;
            };
            let mut resp = response(
                &r,
                Stage::Security,
                Stage::Operational,
                &[("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", &c2)],
            );
            if let Pdu::LoginResponse(l) = &mut resp {
                l.transit = false;
            }
            send(&mut s, resp);
            // Whatever comes next (an answer, or nothing) ends it here.
            let _ = read_pdu(&mut s);
        });
        let chap = ChapCredentials {
            user: "u".into(),
            secret: Secret::new(b"secret_secret".to_vec()),
            mutual: None,
        };
        let rt = runtime();
        let r = Conn::connect(
            &target(p, Some(chap), NO_PING),
            rt.handle(),
            Duration::from_secs(2),
        );
        let e = r.map(|_| ()).unwrap_err().to_string();
        if ok {
            // Our answer was sent; the fake then hung up.
            assert!(!e.contains("challenge"), "{e}");
        } else {
            assert!(
                e.contains("challenge") || e.contains("binary value"),
                "{} chars: {e}",
                challenge.len()
            );
        }
    }
}

/// Sends what a [`Conn::submit`] command ended with to a channel.
struct ToChannel(std::sync::mpsc::Sender<Result<umpath::transport::iscsi::conn::Done, CmdError>>);

impl umpath::transport::iscsi::conn::Completion for ToChannel {
    fn done(self: Box<Self>, r: Result<umpath::transport::iscsi::conn::Done, CmdError>) {
        let _ = self.0.send(r);
    }
}

/// A target that holds a write but answers ABORT TASK: past the timeout
/// the write is aborted, and its end is known (it will not land later),
/// both for a waiting caller and for a started command.
#[test]
fn a_hung_write_is_aborted_and_its_end_is_known() {
    let p = fake(|mut s| {
        login(&mut s);
        while let Some(p) = read_pdu(&mut s) {
            // Commands are held; aborts are answered "function complete".
            if let Pdu::TaskMgmtRequest(t) = p {
                tmf_answer(&mut s, &t, 0);
            }
        }
    });
    let (_rt, c) = connected(p);
    let cmd = write_cmd();
    let data = Some(std::sync::Arc::new(vec![7u8; 512]));
    let t0 = Instant::now();
    let e = c
        .command(cmd, data.clone(), Duration::from_millis(500))
        .unwrap_err();
    assert_eq!(
        e,
        CmdError::TimedOut {
            timeout: Duration::from_millis(500),
            aborted: true
        }
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let (tx, rx) = std::sync::mpsc::channel();
    let t0 = Instant::now();
    assert!(c
        .submit(cmd, data, Duration::from_millis(500), ToChannel(tx))
        .is_ok());
    let r = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        matches!(r, Err(CmdError::TimedOut { aborted: true, .. })),
        "{r:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(
        c.closed().is_none(),
        "the connection stays up: {:?}",
        c.closed()
    );
}

/// A target that refuses ABORT TASK but does LOGICAL UNIT RESET: the
/// hung write ends by the reset and is known ended; a target that answers
/// no task management at all has its connection closed after both waits.
#[test]
fn a_refused_abort_escalates_to_a_lun_reset() {
    for answers in [true, false] {
        let p = fake(move |mut s| {
            login(&mut s);
            while let Some(p) = read_pdu(&mut s) {
                let Pdu::TaskMgmtRequest(t) = p else { continue };
                if !answers {
                    continue;
                }
                // ABORT TASK: "function not supported"; LUN RESET: done.
                let response = if t.function == pdu::TMF_ABORT_TASK {
                    5
                } else {
                    0
                };
                tmf_answer(&mut s, &t, response);
            }
        });
        let (_rt, c) = connected(p);
        let cmd = write_cmd();
        let (tx, rx) = std::sync::mpsc::channel();
        let data = Some(std::sync::Arc::new(vec![7u8; 512]));
        assert!(c
            .submit(cmd, data, Duration::from_millis(300), ToChannel(tx))
            .is_ok());
        let r = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        if answers {
            assert!(
                matches!(r, Err(CmdError::TimedOut { aborted: true, .. })),
                "{r:?}"
            );
            assert!(c.closed().is_none(), "{:?}", c.closed());
        } else {
            let Err(CmdError::Closed(why)) = r else {
                panic!("{r:?}")
            };
            assert!(why.contains("LUN reset"), "{why}");
        }
    }
}
