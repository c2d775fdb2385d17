//! Any bytes as iSCSI PDUs (the first byte picks the digests) and as
//! text keys: decoding never panics, and whatever decodes re-encodes to
//! bytes that decode to the same value. A decoded Login Response is also
//! fed to a login in progress, which must fail or go on, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use umpath::iscsi::digest::Digests;
use umpath::iscsi::login::{Login, LoginConfig, OperationalParams, LOGIN_RANDOM_LEN};
use umpath::iscsi::pdu::{frame_len, Pdu, BHS_LEN};
use umpath::iscsi::text;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let digests = Digests {
        header: flags & 1 != 0,
        data: flags & 2 != 0,
    };
    if let Some(head) = rest.get(..BHS_LEN) {
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(head);
        let _ = frame_len(&bhs, digests, 8192);
    }
    if let Ok(pdu) = Pdu::decode(rest, digests) {
        let wire = pdu.encode(digests);
        assert_eq!(Pdu::decode(&wire, digests).as_ref(), Ok(&pdu));
        if let Pdu::LoginResponse(resp) = &pdu {
            let config = LoginConfig {
                initiator_name: "iqn.2026-11.org.umpath:fuzz".into(),
                target_name: (flags & 4 != 0).then(|| "iqn.2026-11.com.example:lun0".into()),
                isid: resp.isid,
                tsih: 0,
                cid: 0,
                itt: resp.itt,
                cmd_sn: 1,
                exp_stat_sn: 0,
                chap: None,
                chap_algorithms: Vec::new(),
                params: OperationalParams::default(),
            };
            if let Ok((mut login, _)) = Login::start(config, [flags; LOGIN_RANDOM_LEN]) {
                for _ in 0..3 {
                    if login.on_response(resp).is_err() {
                        break;
                    }
                }
            }
        }
    }
    if let Ok(pairs) = text::parse(rest) {
        let again = text::parse(&text::encode(&pairs));
        assert_eq!(again.as_ref(), Ok(&pairs));
        let _ = text::parse_send_targets(&pairs);
    }
    if let Ok(s) = std::str::from_utf8(rest) {
        if let Ok(p) = text::parse_target_address(s) {
            assert_eq!(text::parse_target_address(&p.to_string()), Ok(p));
        }
        let _ = text::decode_binary("fuzz", s);
    }
});
