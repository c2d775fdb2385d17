//! The iSCSI login (RFC 7143 §6, §13) as a pure state machine.
//!
//! ```text
//! let (mut login, first) = Login::start(config, random)?;   // send `first`
//! loop {
//!     match login.on_response(&response)? {                  // each Login Response
//!         Step::Send(next) => { /* send `next` */ }
//!         Step::Done(negotiated) => break,                   // full feature phase
//!     }
//! }
//! ```
//!
//! Security stage: `AuthMethod` (CHAP when credentials are configured,
//! only CHAP when mutual CHAP is), then `CHAP_A`, `CHAP_I`/`CHAP_C` from
//! the target, our `CHAP_N`/`CHAP_R` (with our own `CHAP_I`/`CHAP_C` for
//! mutual CHAP) and the target's `CHAP_N`/`CHAP_R` checked. Operational
//! stage: our keys offered once, the target's answers combined by RFC
//! 7143's rules into [`Negotiated`]. Text the target continues (C bit) is
//! collected with empty requests; a target that does not finish within
//! [`MAX_EXCHANGES`] responses fails the login. Digests are never used
//! during login; negotiated ones start with the first PDU after
//! [`Step::Done`].

use thiserror::Error;

use super::chap::{self, ChapAlgorithm, Secret};
use super::pdu::{LoginRequest, LoginResponse, Stage};
use super::text::{self, Portal, TextAccumulator};

/// Random bytes [`Login::start`] takes: our CHAP identifier (1) and
/// challenge (32) for mutual CHAP.
pub const LOGIN_RANDOM_LEN: usize = 33;
/// Most Login Responses a login may take.
pub const MAX_EXCHANGES: u32 = 32;
/// Longest iSCSI name (RFC 7143 §4.2.7.1).
pub const MAX_NAME_LEN: usize = 223;
const TEXT_CAP: usize = 64 * 1024;

/// CHAP credentials: ours, and optionally the target's for mutual CHAP.
#[derive(Debug, Clone)]
pub struct ChapCredentials {
    /// Our CHAP name (`CHAP_N`).
    pub user: String,
    /// Our secret.
    pub secret: Secret,
    /// The target's name and secret; when set the target must authenticate.
    pub mutual: Option<MutualChap>,
}

/// The target's CHAP credentials (mutual CHAP).
#[derive(Debug, Clone)]
pub struct MutualChap {
    /// The name the target answers with (`CHAP_N`).
    pub user: String,
    /// The target's secret.
    pub secret: Secret,
}

/// The operational parameters we ask for (MaxConnections=1 and
/// ErrorRecoveryLevel=0 are fixed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationalParams {
    /// The largest data segment we receive (declared to the target).
    pub max_recv_data_segment_length: u32,
    /// MaxBurstLength.
    pub max_burst_length: u32,
    /// FirstBurstLength.
    pub first_burst_length: u32,
    /// ImmediateData.
    pub immediate_data: bool,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// Offer CRC32C header digests.
    pub header_digest: bool,
    /// Offer CRC32C data digests.
    pub data_digest: bool,
    /// DataPDUInOrder.
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder.
    pub data_sequence_in_order: bool,
    /// DefaultTime2Wait (seconds).
    pub default_time2wait: u32,
    /// DefaultTime2Retain (seconds).
    pub default_time2retain: u32,
}

impl Default for OperationalParams {
    fn default() -> Self {
        OperationalParams {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1_048_576,
            first_burst_length: 262_144,
            immediate_data: true,
            initial_r2t: false,
            max_outstanding_r2t: 1,
            header_digest: false,
            data_digest: false,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
        }
    }
}

/// What a login needs.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// Our iSCSI name.
    pub initiator_name: String,
    /// The target's name; `None` for a discovery session.
    pub target_name: Option<String>,
    /// The session's ISID (see [`super::pdu::random_isid`]).
    pub isid: [u8; 6],
    /// TSIH: 0 for a new session.
    pub tsih: u16,
    /// Connection ID.
    pub cid: u16,
    /// The Initiator Task Tag of the login's PDUs.
    pub itt: u32,
    /// CmdSN of the login (the first command uses it too).
    pub cmd_sn: u32,
    /// ExpStatSN of the first request (0 on a new connection).
    pub exp_stat_sn: u32,
    /// CHAP credentials; `None` offers AuthMethod=None only.
    pub chap: Option<ChapCredentials>,
    /// The CHAP algorithms to offer, strongest first; empty: all we
    /// know ([`ChapAlgorithm::PREFERENCE`]).
    pub chap_algorithms: Vec<ChapAlgorithm>,
    /// The operational parameters we ask for.
    pub params: OperationalParams,
}

/// How the session was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// No authentication.
    None,
    /// The target authenticated us with CHAP.
    Chap(ChapAlgorithm),
    /// Both sides authenticated with CHAP.
    MutualChap(ChapAlgorithm),
}

/// The session's parameters after negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// Largest data segment we may send (the target's MaxRecvDataSegmentLength).
    pub max_send_data_segment_length: u32,
    /// Largest data segment the target may send us (ours).
    pub max_recv_data_segment_length: u32,
    /// MaxBurstLength.
    pub max_burst_length: u32,
    /// FirstBurstLength (at most MaxBurstLength).
    pub first_burst_length: u32,
    /// ImmediateData.
    pub immediate_data: bool,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// CRC32C header digests.
    pub header_digest: bool,
    /// CRC32C data digests.
    pub data_digest: bool,
    /// DataPDUInOrder.
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder.
    pub data_sequence_in_order: bool,
    /// DefaultTime2Wait.
    pub default_time2wait: u32,
    /// DefaultTime2Retain.
    pub default_time2retain: u32,
}

/// The outcome of a successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The session's TSIH.
    pub tsih: u16,
    /// CmdSN for the first command.
    pub cmd_sn: u32,
    /// ExpStatSN to send next (last StatSN + 1).
    pub exp_stat_sn: u32,
    /// ExpCmdSN from the last response.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN from the last response.
    pub max_cmd_sn: u32,
    /// Negotiated parameters.
    pub params: SessionParams,
    /// How we authenticated.
    pub auth: AuthOutcome,
    /// TargetPortalGroupTag, when the target sent it.
    pub target_portal_group_tag: Option<u16>,
    /// TargetAlias, when the target sent it.
    pub target_alias: Option<String>,
}

/// The next thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this Login Request and feed its response to [`Login::on_response`].
    Send(LoginRequest),
    /// The login is done: full feature phase.
    Done(Negotiated),
}

/// Why a login failed. Messages never carry secrets.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LoginError {
    /// The configuration cannot work.
    #[error("invalid iSCSI login configuration: {0}")]
    Config(String),
    /// Status 0x0201: the target refused our CHAP credentials.
    #[error("CHAP authentication failed (the target refused chap_user/chap_secret)")]
    AuthFailed,
    /// Status 0x0202: we authenticated but may not use this target.
    #[error("the target does not authorize this initiator name for this target (status 0x0202)")]
    NotAuthorized,
    /// The target wants CHAP and none is configured.
    #[error("the target requires CHAP authentication: configure chap_user and chap_secret")]
    ChapRequired,
    /// Mutual CHAP is configured and the target would not authenticate.
    #[error("mutual CHAP is configured but the target does not authenticate itself")]
    MutualChapRefused,
    /// The target's CHAP answer to our challenge is wrong.
    #[error("mutual CHAP failed: {0}")]
    MutualChapFailed(&'static str),
    /// Status 0x0203.
    #[error("target not found at this portal (status 0x0203): check the target name")]
    TargetNotFound,
    /// Status 0x0204.
    #[error("the target has been removed (status 0x0204)")]
    TargetRemoved,
    /// Status 0x0101/0x0102: log in at `portal` instead.
    #[error("the target redirects to {portal} ({})", if *permanent { "permanently" } else { "temporarily" })]
    Redirect {
        /// Where to log in.
        portal: Portal,
        /// Status 0x0102 (moved permanently) rather than 0x0101.
        permanent: bool,
    },
    /// Status 0x03xx: try again later.
    #[error("the target is busy or out of resources (status 0x{status:04x}): retry later")]
    TargetBusy {
        /// Status-Class and Status-Detail.
        status: u16,
    },
    /// Another non-zero status.
    #[error("the target refused the login: {reason} (status 0x{status:04x})")]
    Rejected {
        /// Status-Class and Status-Detail.
        status: u16,
        /// What it means.
        reason: &'static str,
    },
    /// The target broke the protocol.
    #[error("iSCSI login protocol error: {0}")]
    Protocol(String),
}

/// Where the login is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// The first request (AuthMethod offer) is out.
    AuthOffered,
    /// Our CHAP_A offer is out.
    ChapAlgorithmSent,
    /// Our CHAP_N/CHAP_R are out; with our challenge for mutual CHAP.
    ChapResponseSent {
        alg: ChapAlgorithm,
        mutual: Option<(u8, Vec<u8>)>,
    },
    /// Security done on our side; waiting for the target to transit.
    SecurityTransit,
    /// Our operational keys are out.
    Operational,
    /// Done or failed: nothing more is accepted.
    Finished,
}

/// A login in progress. See the module docs.
#[derive(Debug)]
pub struct Login {
    config: LoginConfig,
    random: [u8; LOGIN_RANDOM_LEN],
    state: State,
    csg: Stage,
    nsg: Stage,
    sent_transit: bool,
    exchanges: u32,
    text: TextAccumulator,
    exp_stat_sn: u32,
    auth: AuthOutcome,
    tpgt: Option<u16>,
    alias: Option<String>,
    offered: Vec<&'static str>,
    answers: Vec<(String, String)>,
    replied: Vec<String>,
    /// The CHAP algorithm the target chose.
    chap_alg: Option<ChapAlgorithm>,
}

fn check_name(what: &str, name: &str) -> Result<(), LoginError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains(['\0', '=']) {
        return Err(LoginError::Config(format!(
            "{what} must be 1 to {MAX_NAME_LEN} bytes without NUL or '='"
        )));
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

impl Login {
    /// Checks `config` and gives the first Login Request.
    pub fn start(
        config: LoginConfig,
        random: [u8; LOGIN_RANDOM_LEN],
    ) -> Result<(Login, LoginRequest), LoginError> {
        check_name("initiator_name", &config.initiator_name)?;
        if let Some(t) = &config.target_name {
            check_name("target name", t)?;
        }
        let p = &config.params;
        let range = |what: &str, v: u32, lo: u32, hi: u32| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(LoginError::Config(format!(
                    "{what} {v} is not in {lo}..={hi}"
                )))
            }
        };
        range(
            "MaxRecvDataSegmentLength",
            p.max_recv_data_segment_length,
            512,
            16_777_215,
        )?;
        range("MaxBurstLength", p.max_burst_length, 512, 16_777_215)?;
        range("FirstBurstLength", p.first_burst_length, 512, 16_777_215)?;
        range("MaxOutstandingR2T", p.max_outstanding_r2t, 1, 65_535)?;
        range("DefaultTime2Wait", p.default_time2wait, 0, 3600)?;
        range("DefaultTime2Retain", p.default_time2retain, 0, 3600)?;
        if let Some(c) = &config.chap {
            check_name("chap_user", &c.user)?;
            if c.secret.is_empty() {
                return Err(LoginError::Config("chap_secret is empty".into()));
            }
            if let Some(m) = &c.mutual {
                check_name("mutual_user", &m.user)?;
                if m.secret.is_empty() {
                    return Err(LoginError::Config("mutual_secret is empty".into()));
                }
                if m.secret == c.secret {
                    return Err(LoginError::Config(
                        "mutual_secret must differ from chap_secret (RFC 7143 §12.1.3)".into(),
                    ));
                }
            }
        }
        let auth_offer = match &config.chap {
            None => "None",
            Some(c) if c.mutual.is_some() => "CHAP",
            Some(_) => "CHAP,None",
        };
        let mut keys = vec![("InitiatorName".to_string(), config.initiator_name.clone())];
        match &config.target_name {
            Some(t) => {
                keys.push(("SessionType".into(), "Normal".into()));
                keys.push(("TargetName".into(), t.clone()));
            }
            None => keys.push(("SessionType".into(), "Discovery".into())),
        }
        keys.push(("AuthMethod".into(), auth_offer.into()));
        let mut login = Login {
            exp_stat_sn: config.exp_stat_sn,
            config,
            random,
            state: State::AuthOffered,
            csg: Stage::Security,
            nsg: Stage::Operational,
            sent_transit: true,
            exchanges: 0,
            text: TextAccumulator::new(TEXT_CAP),
            auth: AuthOutcome::None,
            tpgt: None,
            alias: None,
            offered: Vec::new(),
            answers: Vec::new(),
            replied: Vec::new(),
            chap_alg: None,
        };
        let first = login.request(true, Stage::Security, Stage::Operational, &keys);
        Ok((login, first))
    }

    fn request(
        &mut self,
        transit: bool,
        csg: Stage,
        nsg: Stage,
        keys: &[(String, String)],
    ) -> LoginRequest {
        self.csg = csg;
        self.nsg = nsg;
        self.sent_transit = transit;
        LoginRequest {
            transit,
            continue_flag: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: self.config.isid,
            tsih: self.config.tsih,
            itt: self.config.itt,
            cid: self.config.cid,
            cmd_sn: self.config.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: text::encode(keys),
        }
    }

    /// The CHAP algorithm the target chose, once it has (also after the
    /// login failed: a target may choose an algorithm it then cannot
    /// check, as tgtd 1.0.85 does with SHA-256, and the driver may try
    /// again offering weaker ones).
    pub fn chap_algorithm(&self) -> Option<ChapAlgorithm> {
        self.chap_alg
    }

    fn algorithms(&self) -> Vec<ChapAlgorithm> {
        if self.config.chap_algorithms.is_empty() {
            ChapAlgorithm::PREFERENCE.to_vec()
        } else {
            self.config.chap_algorithms.clone()
        }
    }

    /// Takes the target's Login Response to our last request.
    pub fn on_response(&mut self, resp: &LoginResponse) -> Result<Step, LoginError> {
        let r = self.step(resp);
        if !matches!(r, Ok(Step::Send(_))) {
            self.state = State::Finished;
        }
        r
    }

    fn step(&mut self, resp: &LoginResponse) -> Result<Step, LoginError> {
        let proto = |m: String| Err(LoginError::Protocol(m));
        if self.state == State::Finished {
            return proto("a Login Response after the login ended".into());
        }
        self.exchanges += 1;
        if self.exchanges > MAX_EXCHANGES {
            return proto(format!(
                "the target did not finish the login in {MAX_EXCHANGES} exchanges"
            ));
        }
        // A refusal is final whatever else it says: tgtd, for one, does
        // not echo the ITT and ISID in the responses that refuse a login.
        if resp.status_class != 0 {
            return Err(status_error(resp));
        }
        if resp.itt != self.config.itt || resp.isid != self.config.isid {
            return proto("a Login Response for another login (ITT or ISID)".into());
        }
        if resp.version_active != 0 {
            return proto(format!("unsupported iSCSI version {}", resp.version_active));
        }
        self.exp_stat_sn = resp.stat_sn.wrapping_add(1);
        if resp.csg != self.csg {
            return proto(format!(
                "response for stage {:?}, we are in {:?}",
                resp.csg, self.csg
            ));
        }
        if resp.transit && (!self.sent_transit || resp.nsg != self.nsg) {
            return proto(format!("the target moved to stage {:?} unasked", resp.nsg));
        }
        if resp.continue_flag {
            if resp.transit {
                return proto("a Login Response with both T and C".into());
            }
            self.text.push(&resp.data, true).map_err(text_err)?;
            return Ok(Step::Send(self.request(false, self.csg, self.nsg, &[])));
        }
        let pairs = self
            .text
            .push(&resp.data, false)
            .map_err(text_err)?
            .unwrap_or_default();
        if let Some(t) = text::get(&pairs, "TargetPortalGroupTag") {
            self.tpgt = Some(parse_num("TargetPortalGroupTag", t, 0, 65_535)? as u16);
        }
        if let Some(a) = text::get(&pairs, "TargetAlias") {
            self.alias = Some(a.to_string());
        }
        match std::mem::replace(&mut self.state, State::Finished) {
            State::AuthOffered => self.on_auth_method(resp, &pairs),
            State::ChapAlgorithmSent => self.on_chap_challenge(resp, &pairs),
            State::ChapResponseSent { alg, mutual } => {
                self.on_chap_result(resp, &pairs, alg, mutual)
            }
            State::SecurityTransit => self.security_done(resp),
            State::Operational => self.on_operational(resp, pairs),
            State::Finished => proto("a Login Response after the login ended".into()),
        }
    }

    fn on_auth_method(
        &mut self,
        resp: &LoginResponse,
        pairs: &[(String, String)],
    ) -> Result<Step, LoginError> {
        let chosen = text::get(pairs, "AuthMethod");
        match (chosen, &self.config.chap) {
            (Some("CHAP"), None) => Err(LoginError::ChapRequired),
            (Some("CHAP"), Some(_)) => {
                if resp.transit {
                    return Err(LoginError::Protocol(
                        "the target chose CHAP and left the security stage before it".into(),
                    ));
                }
                self.state = State::ChapAlgorithmSent;
                let keys = [(
                    "CHAP_A".to_string(),
                    ChapAlgorithm::offer_of(&self.algorithms()),
                )];
                Ok(Step::Send(self.request(
                    false,
                    Stage::Security,
                    Stage::Operational,
                    &keys,
                )))
            }
            (Some("None") | None, Some(c)) if c.mutual.is_some() => {
                Err(LoginError::MutualChapRefused)
            }
            (Some("None") | None, _) => self.security_done(resp),
            (Some(_), None) => Err(LoginError::ChapRequired),
            (Some(other), Some(_)) => Err(LoginError::Protocol(format!(
                "the target answered AuthMethod={}",
                clip(other)
            ))),
        }
    }

    fn on_chap_challenge(
        &mut self,
        resp: &LoginResponse,
        pairs: &[(String, String)],
    ) -> Result<Step, LoginError> {
        let proto = |m: &str| LoginError::Protocol(m.to_string());
        if resp.transit {
            return Err(proto("the target left the security stage during CHAP"));
        }
        let Some(creds) = self.config.chap.clone() else {
            return Err(LoginError::ChapRequired);
        };
        let a = text::get(pairs, "CHAP_A").ok_or_else(|| proto("no CHAP_A from the target"))?;
        let alg = a
            .trim()
            .parse::<u32>()
            .ok()
            .and_then(ChapAlgorithm::from_code)
            .filter(|a| self.algorithms().contains(a))
            .ok_or_else(|| {
                LoginError::Protocol(format!(
                    "the target chose CHAP_A={} we did not offer",
                    clip(a)
                ))
            })?;
        self.chap_alg = Some(alg);
        let id = text::get(pairs, "CHAP_I").ok_or_else(|| proto("no CHAP_I from the target"))?;
        let id = parse_num("CHAP_I", id, 0, 255)? as u8;
        let c = text::get(pairs, "CHAP_C").ok_or_else(|| proto("no CHAP_C from the target"))?;
        let challenge = text::decode_binary("CHAP_C", c).map_err(text_err)?;
        chap::check_challenge(&challenge).map_err(|e| LoginError::Protocol(e.to_string()))?;
        let response = alg.response(id, &creds.secret, &challenge);
        let mut keys = vec![
            ("CHAP_N".to_string(), creds.user.clone()),
            ("CHAP_R".to_string(), text::encode_hex(&response)),
        ];
        let mutual = if creds.mutual.is_some() {
            let our_id = self.random[0];
            let ours = self.random[1..].to_vec();
            if ours == challenge {
                return Err(LoginError::Protocol(
                    chap::ChapError::ReflectedChallenge.to_string(),
                ));
            }
            keys.push(("CHAP_I".into(), our_id.to_string()));
            keys.push(("CHAP_C".into(), text::encode_hex(&ours)));
            Some((our_id, ours))
        } else {
            None
        };
        self.state = State::ChapResponseSent { alg, mutual };
        Ok(Step::Send(self.request(
            true,
            Stage::Security,
            Stage::Operational,
            &keys,
        )))
    }

    fn on_chap_result(
        &mut self,
        resp: &LoginResponse,
        pairs: &[(String, String)],
        alg: ChapAlgorithm,
        mutual: Option<(u8, Vec<u8>)>,
    ) -> Result<Step, LoginError> {
        let target = self.config.chap.as_ref().and_then(|c| c.mutual.as_ref());
        match (mutual, target) {
            (Some((id, challenge)), Some(m)) => {
                let (Some(n), Some(r)) = (text::get(pairs, "CHAP_N"), text::get(pairs, "CHAP_R"))
                else {
                    return Err(LoginError::MutualChapFailed(
                        "the target did not answer our challenge",
                    ));
                };
                if n != m.user {
                    return Err(LoginError::MutualChapFailed(
                        "the target's CHAP_N is not mutual_user",
                    ));
                }
                let r = text::decode_binary("CHAP_R", r).map_err(text_err)?;
                if !alg.verify(id, &m.secret, &challenge, &r) {
                    return Err(LoginError::MutualChapFailed(
                        "wrong response: the target does not know mutual_secret",
                    ));
                }
                self.auth = AuthOutcome::MutualChap(alg);
            }
            _ => self.auth = AuthOutcome::Chap(alg),
        }
        self.security_done(resp)
    }

    /// Security is done on our side: go on once the target transits.
    fn security_done(&mut self, resp: &LoginResponse) -> Result<Step, LoginError> {
        if resp.transit {
            return Ok(Step::Send(self.operational_request()));
        }
        self.state = State::SecurityTransit;
        Ok(Step::Send(self.request(
            true,
            Stage::Security,
            Stage::Operational,
            &[],
        )))
    }

    fn operational_request(&mut self) -> LoginRequest {
        let p = self.config.params.clone();
        let digest = |on| if on { "CRC32C,None" } else { "None" };
        let mut keys: Vec<(&'static str, String)> = vec![
            ("HeaderDigest", digest(p.header_digest).into()),
            ("DataDigest", digest(p.data_digest).into()),
            (
                "MaxRecvDataSegmentLength",
                p.max_recv_data_segment_length.to_string(),
            ),
            ("DefaultTime2Wait", p.default_time2wait.to_string()),
            ("DefaultTime2Retain", p.default_time2retain.to_string()),
            ("ErrorRecoveryLevel", "0".into()),
        ];
        if self.config.target_name.is_some() {
            keys.extend([
                ("MaxConnections", "1".into()),
                ("InitialR2T", yes_no(p.initial_r2t).into()),
                ("ImmediateData", yes_no(p.immediate_data).into()),
                ("MaxBurstLength", p.max_burst_length.to_string()),
                ("FirstBurstLength", p.first_burst_length.to_string()),
                ("MaxOutstandingR2T", p.max_outstanding_r2t.to_string()),
                ("DataPDUInOrder", yes_no(p.data_pdu_in_order).into()),
                (
                    "DataSequenceInOrder",
                    yes_no(p.data_sequence_in_order).into(),
                ),
            ]);
        }
        self.offered = keys.iter().map(|(k, _)| *k).collect();
        let keys: Vec<(String, String)> =
            keys.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        self.state = State::Operational;
        self.request(true, Stage::Operational, Stage::FullFeature, &keys)
    }

    fn on_operational(
        &mut self,
        resp: &LoginResponse,
        pairs: Vec<(String, String)>,
    ) -> Result<Step, LoginError> {
        // Keys the target offers on its own need an answer if we go on.
        let mut replies = Vec::new();
        for (k, _) in &pairs {
            let ours = self.offered.contains(&k.as_str());
            let declarative = matches!(
                k.as_str(),
                "MaxRecvDataSegmentLength"
                    | "TargetPortalGroupTag"
                    | "TargetAlias"
                    | "TargetAddress"
            );
            if !ours && !declarative && !self.replied.contains(k) {
                let answer = if KNOWN_KEYS.contains(&k.as_str()) {
                    "Irrelevant"
                } else {
                    "NotUnderstood"
                };
                replies.push((k.clone(), answer.to_string()));
                self.replied.push(k.clone());
            }
        }
        if self.answers.len() + pairs.len() > text::MAX_PAIRS {
            return Err(LoginError::Protocol("too many operational keys".into()));
        }
        self.answers.extend(pairs);
        if !resp.transit {
            self.state = State::Operational;
            return Ok(Step::Send(self.request(
                true,
                Stage::Operational,
                Stage::FullFeature,
                &replies,
            )));
        }
        let params = negotiate(
            &self.config.params,
            self.config.target_name.is_none(),
            &self.answers,
        )?;
        Ok(Step::Done(Negotiated {
            tsih: resp.tsih,
            cmd_sn: self.config.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            exp_cmd_sn: resp.exp_cmd_sn,
            max_cmd_sn: resp.max_cmd_sn,
            params,
            auth: self.auth,
            target_portal_group_tag: self.tpgt,
            target_alias: self.alias.clone(),
        }))
    }
}

/// RFC 7143 session keys (markers, obsolete in RFC 7143, are not among them).
const KNOWN_KEYS: [&str; 13] = [
    "HeaderDigest",
    "DataDigest",
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "ErrorRecoveryLevel",
];

fn text_err(e: text::TextError) -> LoginError {
    LoginError::Protocol(e.to_string())
}

fn parse_num(key: &str, v: &str, lo: u64, hi: u64) -> Result<u64, LoginError> {
    let n = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse::<u64>().ok(),
    };
    n.filter(|n| (lo..=hi).contains(n)).ok_or_else(|| {
        LoginError::Protocol(format!("{key}={} is not a number in {lo}..={hi}", clip(v)))
    })
}

fn status_error(resp: &LoginResponse) -> LoginError {
    let status = u16::from(resp.status_class) << 8 | u16::from(resp.status_detail);
    match status {
        0x0101 | 0x0102 => {
            let addr = text::parse(&resp.data)
                .ok()
                .and_then(|p| text::get(&p, "TargetAddress").map(text::parse_target_address));
            match addr {
                Some(Ok(portal)) => LoginError::Redirect {
                    portal,
                    permanent: status == 0x0102,
                },
                _ => LoginError::Protocol("a redirection without a valid TargetAddress".into()),
            }
        }
        0x0201 => LoginError::AuthFailed,
        0x0202 => LoginError::NotAuthorized,
        0x0203 => LoginError::TargetNotFound,
        0x0204 => LoginError::TargetRemoved,
        0x0300..=0x03ff => LoginError::TargetBusy { status },
        _ => LoginError::Rejected {
            status,
            reason: match status {
                0x0200 => "initiator error",
                0x0205 => "unsupported iSCSI version",
                0x0206 => "too many connections",
                0x0207 => "missing parameter",
                0x0208 => "cannot include the connection in the session",
                0x0209 => "session type not supported",
                0x020a => "session does not exist",
                0x020b => "invalid request during login",
                _ => "unknown status",
            },
        },
    }
}

/// A target's answer to one key.
enum Answer<'a> {
    /// Not answered, or Irrelevant/Reject/NotUnderstood: the default applies.
    Default,
    /// A value.
    Value(&'a str),
}

fn answer<'a>(pairs: &'a [(String, String)], key: &str) -> Answer<'a> {
    match pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
    {
        None | Some("Irrelevant" | "Reject" | "NotUnderstood") => Answer::Default,
        Some(v) => Answer::Value(v),
    }
}

fn bool_value(key: &str, v: &str) -> Result<bool, LoginError> {
    match v {
        "Yes" => Ok(true),
        "No" => Ok(false),
        _ => Err(LoginError::Protocol(format!(
            "{key}={} is not Yes or No",
            clip(v)
        ))),
    }
}

/// The result of a Boolean key: `or` (InitialR2T) or and (ImmediateData).
fn boolean(
    pairs: &[(String, String)],
    key: &str,
    ours: bool,
    default: bool,
    or: bool,
) -> Result<bool, LoginError> {
    let combine = |a: bool, b: bool| if or { a || b } else { a && b };
    match answer(pairs, key) {
        Answer::Default => Ok(combine(ours, default)),
        Answer::Value(v) => {
            let theirs = bool_value(key, v)?;
            if combine(ours, theirs) != theirs {
                return Err(LoginError::Protocol(format!(
                    "{key}={v} is not a valid result for our {}",
                    yes_no(ours)
                )));
            }
            Ok(theirs)
        }
    }
}

/// The result of a numeric key whose function is the minimum (or the
/// maximum when `max`).
fn numeric(
    pairs: &[(String, String)],
    key: &str,
    ours: u32,
    default: u32,
    (lo, hi): (u32, u32),
    max: bool,
) -> Result<u32, LoginError> {
    let pick = |a: u32, b: u32| if max { a.max(b) } else { a.min(b) };
    match answer(pairs, key) {
        Answer::Default => Ok(pick(ours, default)),
        Answer::Value(v) => {
            let theirs = parse_num(key, v, u64::from(lo), u64::from(hi))? as u32;
            if pick(ours, theirs) != theirs {
                return Err(LoginError::Protocol(format!(
                    "{key}={theirs} is not a valid result for our {ours}"
                )));
            }
            Ok(theirs)
        }
    }
}

fn digest_choice(pairs: &[(String, String)], key: &str, offered: bool) -> Result<bool, LoginError> {
    match answer(pairs, key) {
        Answer::Default | Answer::Value("None") => Ok(false),
        Answer::Value("CRC32C") if offered => Ok(true),
        Answer::Value(v) => Err(LoginError::Protocol(format!(
            "{key}={} was not offered",
            clip(v)
        ))),
    }
}

/// Combines our offer and the target's answers by RFC 7143 §13's rules.
fn negotiate(
    ours: &OperationalParams,
    discovery: bool,
    pairs: &[(String, String)],
) -> Result<SessionParams, LoginError> {
    const LEN: (u32, u32) = (512, 16_777_215);
    let max_send = match answer(pairs, "MaxRecvDataSegmentLength") {
        Answer::Default => 8192,
        Answer::Value(v) => parse_num("MaxRecvDataSegmentLength", v, 512, 16_777_215)? as u32,
    };
    let mut p = SessionParams {
        max_send_data_segment_length: max_send,
        max_recv_data_segment_length: ours.max_recv_data_segment_length,
        max_burst_length: ours.max_burst_length,
        first_burst_length: ours.first_burst_length,
        immediate_data: ours.immediate_data,
        initial_r2t: ours.initial_r2t,
        max_outstanding_r2t: ours.max_outstanding_r2t,
        header_digest: digest_choice(pairs, "HeaderDigest", ours.header_digest)?,
        data_digest: digest_choice(pairs, "DataDigest", ours.data_digest)?,
        data_pdu_in_order: ours.data_pdu_in_order,
        data_sequence_in_order: ours.data_sequence_in_order,
        default_time2wait: numeric(
            pairs,
            "DefaultTime2Wait",
            ours.default_time2wait,
            2,
            (0, 3600),
            true,
        )?,
        default_time2retain: numeric(
            pairs,
            "DefaultTime2Retain",
            ours.default_time2retain,
            20,
            (0, 3600),
            false,
        )?,
    };
    numeric(pairs, "ErrorRecoveryLevel", 0, 0, (0, 2), false)?;
    if !discovery {
        numeric(pairs, "MaxConnections", 1, 1, (1, 65_535), false)?;
        p.initial_r2t = boolean(pairs, "InitialR2T", ours.initial_r2t, true, true)?;
        p.immediate_data = boolean(pairs, "ImmediateData", ours.immediate_data, true, false)?;
        p.max_burst_length = numeric(
            pairs,
            "MaxBurstLength",
            ours.max_burst_length,
            262_144,
            LEN,
            false,
        )?;
        p.first_burst_length = numeric(
            pairs,
            "FirstBurstLength",
            ours.first_burst_length,
            65_536,
            LEN,
            false,
        )?
        .min(p.max_burst_length);
        p.max_outstanding_r2t = numeric(
            pairs,
            "MaxOutstandingR2T",
            ours.max_outstanding_r2t,
            1,
            (1, 65_535),
            false,
        )?;
        p.data_pdu_in_order = boolean(pairs, "DataPDUInOrder", ours.data_pdu_in_order, true, true)?;
        p.data_sequence_in_order = boolean(
            pairs,
            "DataSequenceInOrder",
            ours.data_sequence_in_order,
            true,
            true,
        )?;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IQN: &str = "iqn.2026-11.com.example:lun0";
    const ISID: [u8; 6] = [0x80, 1, 2, 3, 0, 0];

    fn config(chap: Option<ChapCredentials>) -> LoginConfig {
        LoginConfig {
            initiator_name: "iqn.2026-11.org.umpath:host".into(),
            target_name: Some(IQN.into()),
            isid: ISID,
            tsih: 0,
            cid: 0,
            itt: 0x10,
            cmd_sn: 1,
            exp_stat_sn: 0,
            chap,
            chap_algorithms: Vec::new(),
            params: OperationalParams::default(),
        }
    }

    fn one_way() -> Option<ChapCredentials> {
        Some(ChapCredentials {
            user: "tecmint".into(),
            secret: Secret::new("tecmint_chap12"),
            mutual: None,
        })
    }

    fn mutual() -> Option<ChapCredentials> {
        Some(ChapCredentials {
            user: "tecmint".into(),
            secret: Secret::new("tecmint_chap12"),
            mutual: Some(MutualChap {
                user: "target1".into(),
                secret: Secret::new("target_secret99"),
            }),
        })
    }

    /// A scripted target's response to `req`.
    fn resp(req: &LoginRequest, transit: bool, keys: &[(&str, &str)]) -> LoginResponse {
        LoginResponse {
            transit,
            continue_flag: false,
            csg: req.csg,
            nsg: req.nsg,
            version_max: 0,
            version_active: 0,
            isid: req.isid,
            tsih: if transit && req.nsg == Stage::FullFeature {
                7
            } else {
                0
            },
            itt: req.itt,
            stat_sn: 100 + req.exp_stat_sn,
            exp_cmd_sn: 1,
            max_cmd_sn: 32,
            status_class: 0,
            status_detail: 0,
            data: text::encode(keys),
        }
    }

    fn status(req: &LoginRequest, code: u16, keys: &[(&str, &str)]) -> LoginResponse {
        let mut r = resp(req, false, keys);
        r.status_class = (code >> 8) as u8;
        r.status_detail = code as u8;
        r
    }

    fn keys(req: &LoginRequest) -> Vec<(String, String)> {
        text::parse(&req.data).unwrap()
    }

    fn key<'a>(k: &'a [(String, String)], name: &str) -> &'a str {
        text::get(k, name).unwrap_or_else(|| panic!("no {name} in {k:?}"))
    }

    fn send(step: Result<Step, LoginError>) -> LoginRequest {
        match step {
            Ok(Step::Send(r)) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    const TARGET_OP: &[(&str, &str)] = &[
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxRecvDataSegmentLength", "65536"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "20"),
        ("ErrorRecoveryLevel", "0"),
        ("MaxConnections", "1"),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("MaxOutstandingR2T", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
    ];

    /// Operational stage with the target's answers; returns the result.
    fn finish(login: &mut Login, op: &LoginRequest) -> Negotiated {
        assert_eq!(
            (op.csg, op.nsg, op.transit),
            (Stage::Operational, Stage::FullFeature, true)
        );
        match login.on_response(&resp(op, true, TARGET_OP)) {
            Ok(Step::Done(n)) => n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn login_without_chap() {
        let (mut login, first) = Login::start(config(None), [0; 33]).unwrap();
        assert_eq!(
            (first.csg, first.nsg, first.transit, first.itt, first.isid),
            (Stage::Security, Stage::Operational, true, 0x10, ISID)
        );
        let k = keys(&first);
        assert_eq!(key(&k, "InitiatorName"), "iqn.2026-11.org.umpath:host");
        assert_eq!(key(&k, "SessionType"), "Normal");
        assert_eq!(key(&k, "TargetName"), IQN);
        assert_eq!(key(&k, "AuthMethod"), "None");
        let op = send(login.on_response(&resp(
            &first,
            true,
            &[("AuthMethod", "None"), ("TargetPortalGroupTag", "1")],
        )));
        assert_eq!(op.exp_stat_sn, 101);
        let k = keys(&op);
        assert_eq!(key(&k, "MaxRecvDataSegmentLength"), "262144");
        assert_eq!(key(&k, "InitialR2T"), "No");
        assert_eq!(key(&k, "ImmediateData"), "Yes");
        assert_eq!(key(&k, "MaxConnections"), "1");
        let n = finish(&mut login, &op);
        assert_eq!(n.tsih, 7);
        assert_eq!(
            (n.cmd_sn, n.exp_stat_sn, n.exp_cmd_sn, n.max_cmd_sn),
            (1, 202, 1, 32)
        );
        assert_eq!(n.auth, AuthOutcome::None);
        assert_eq!(n.target_portal_group_tag, Some(1));
        let p = &n.params;
        // MaxRecvDataSegmentLength is declarative per direction.
        assert_eq!(
            (
                p.max_send_data_segment_length,
                p.max_recv_data_segment_length
            ),
            (65536, 262144)
        );
        // Minimum, OR, AND.
        assert_eq!((p.max_burst_length, p.first_burst_length), (262144, 65536));
        assert!(p.initial_r2t && p.immediate_data && !p.header_digest);
        // Nothing is accepted after the end.
        assert!(matches!(
            login.on_response(&resp(&op, true, &[])),
            Err(LoginError::Protocol(_))
        ));
    }

    fn chap_exchange(creds: Option<ChapCredentials>) -> (Login, LoginRequest) {
        let (mut login, first) = Login::start(config(creds.clone()), [0x5a; 33]).unwrap();
        let want = if creds.unwrap().mutual.is_some() {
            "CHAP"
        } else {
            "CHAP,None"
        };
        assert_eq!(key(&keys(&first), "AuthMethod"), want);
        let a = send(login.on_response(&resp(&first, false, &[("AuthMethod", "CHAP")])));
        assert_eq!(key(&keys(&a), "CHAP_A"), "7,6,5");
        assert!(!a.transit);
        let r = send(login.on_response(&resp(
            &a,
            false,
            &[
                ("CHAP_A", "5"),
                ("CHAP_I", "1"),
                ("CHAP_C", "0x000102030405060708090a0b0c0d0e0f"),
            ],
        )));
        assert!(r.transit);
        let k = keys(&r);
        assert_eq!(key(&k, "CHAP_N"), "tecmint");
        // python3: hashlib.md5(bytes([1]) + b"tecmint_chap12" + bytes(range(16))).hexdigest()
        assert_eq!(key(&k, "CHAP_R"), "0xee21a05f2cffd889b4fbfbdad93ebc62");
        (login, r)
    }

    #[test]
    fn login_with_one_way_chap() {
        let (mut login, r) = chap_exchange(one_way());
        assert!(text::get(&keys(&r), "CHAP_C").is_none());
        let op = send(login.on_response(&resp(&r, true, &[])));
        let n = finish(&mut login, &op);
        assert_eq!(n.auth, AuthOutcome::Chap(ChapAlgorithm::Md5));
    }

    #[test]
    fn login_with_mutual_chap() {
        let (mut login, r) = chap_exchange(mutual());
        let k = keys(&r);
        assert_eq!(key(&k, "CHAP_I"), "90");
        let ours = text::decode_binary("CHAP_C", key(&k, "CHAP_C")).unwrap();
        assert_eq!(ours, [0x5a; 32]);
        let good = ChapAlgorithm::Md5.response(0x5a, &Secret::new("target_secret99"), &ours);
        let good = text::encode_hex(&good);

        // A wrong answer, a wrong name, no answer.
        let bad =
            text::encode_hex(&ChapAlgorithm::Md5.response(0x5a, &Secret::new("guess"), &ours));
        for keys in [
            vec![("CHAP_N", "target1"), ("CHAP_R", bad.as_str())],
            vec![("CHAP_N", "other"), ("CHAP_R", good.as_str())],
            vec![],
        ] {
            let (mut login, r) = chap_exchange(mutual());
            let e = login.on_response(&resp(&r, true, &keys)).unwrap_err();
            assert!(matches!(e, LoginError::MutualChapFailed(_)), "{e:?}");
            assert!(!e.to_string().contains("target_secret99"));
        }

        // The right answer, then a separate transit.
        let t = send(login.on_response(&resp(
            &r,
            false,
            &[("CHAP_N", "target1"), ("CHAP_R", &good)],
        )));
        assert_eq!((t.csg, t.transit, t.data.len()), (Stage::Security, true, 0));
        let op = send(login.on_response(&resp(&t, true, &[])));
        assert_eq!(
            finish(&mut login, &op).auth,
            AuthOutcome::MutualChap(ChapAlgorithm::Md5)
        );
    }

    #[test]
    fn mutual_refused_and_reflected() {
        let (mut login, first) = Login::start(config(mutual()), [0x5a; 33]).unwrap();
        let e = login.on_response(&resp(&first, true, &[("AuthMethod", "None")]));
        assert_eq!(e, Err(LoginError::MutualChapRefused));

        let (mut login, first) = Login::start(config(mutual()), [7; 33]).unwrap();
        let a = send(login.on_response(&resp(&first, false, &[("AuthMethod", "CHAP")])));
        let ours = text::encode_hex(&[7; 32]);
        let e = login.on_response(&resp(
            &a,
            false,
            &[("CHAP_A", "5"), ("CHAP_I", "3"), ("CHAP_C", &ours)],
        ));
        assert!(matches!(e, Err(LoginError::Protocol(m)) if m.contains("our own")));
    }

    #[test]
    fn wrong_secret_is_auth_failed() {
        let (mut login, r) = chap_exchange(one_way());
        let e = login.on_response(&status(&r, 0x0201, &[])).unwrap_err();
        assert_eq!(e, LoginError::AuthFailed);
        assert!(e.to_string().contains("CHAP authentication failed"));
        assert!(!format!("{login:?}").contains("tecmint_chap12"));
    }

    #[test]
    fn chap_without_credentials() {
        let (mut login, first) = Login::start(config(None), [0; 33]).unwrap();
        let e = login.on_response(&resp(&first, false, &[("AuthMethod", "CHAP")]));
        assert_eq!(e, Err(LoginError::ChapRequired));
        let (mut login, first) = Login::start(config(None), [0; 33]).unwrap();
        let e = login.on_response(&resp(&first, false, &[("AuthMethod", "Reject")]));
        assert_eq!(e, Err(LoginError::ChapRequired));
    }

    #[test]
    fn chap_challenges_of_odd_and_bad_lengths() {
        let start = || {
            let (mut login, first) = Login::start(config(one_way()), [0; 33]).unwrap();
            let a = send(login.on_response(&resp(&first, false, &[("AuthMethod", "CHAP")])));
            (login, a)
        };
        // Odd length: an implied leading zero, 0x123 = [0x01, 0x23].
        let (mut login, a) = start();
        let r = send(login.on_response(&resp(
            &a,
            false,
            &[("CHAP_A", "5"), ("CHAP_I", "9"), ("CHAP_C", "0x123")],
        )));
        let want = ChapAlgorithm::Md5.response(9, &Secret::new("tecmint_chap12"), &[0x01, 0x23]);
        assert_eq!(key(&keys(&r), "CHAP_R"), text::encode_hex(&want));
        let long = format!("0x{}", "ab".repeat(1025));
        for c in ["0x", "0xgg", "abc", long.as_str()] {
            let (mut login, a) = start();
            let e = login.on_response(&resp(
                &a,
                false,
                &[("CHAP_A", "5"), ("CHAP_I", "9"), ("CHAP_C", c)],
            ));
            assert!(matches!(e, Err(LoginError::Protocol(_))), "{c}: {e:?}");
        }
        for (alg, id) in [("4", "1"), ("5", "256"), ("5", "x")] {
            let (mut login, a) = start();
            let e = login.on_response(&resp(
                &a,
                false,
                &[("CHAP_A", alg), ("CHAP_I", id), ("CHAP_C", "0x01")],
            ));
            assert!(
                matches!(e, Err(LoginError::Protocol(_))),
                "{alg} {id}: {e:?}"
            );
        }
        // SHA-256 when the target picks it.
        let (mut login, a) = start();
        let r = send(login.on_response(&resp(
            &a,
            false,
            &[("CHAP_A", "7"), ("CHAP_I", "0x0a"), ("CHAP_C", "0x01")],
        )));
        let want = ChapAlgorithm::Sha256.response(10, &Secret::new("tecmint_chap12"), &[1]);
        assert_eq!(key(&keys(&r), "CHAP_R"), text::encode_hex(&want));
    }

    #[test]
    fn statuses() {
        let first = || Login::start(config(None), [0; 33]).unwrap();
        let (mut l, f) = first();
        assert_eq!(
            l.on_response(&status(
                &f,
                0x0101,
                &[("TargetAddress", "[fd00::9]:3262,2")]
            )),
            Err(LoginError::Redirect {
                portal: Portal {
                    address: "fd00::9".into(),
                    port: 3262,
                    tpgt: 2
                },
                permanent: false
            })
        );
        let (mut l, f) = first();
        let e = l
            .on_response(&status(&f, 0x0102, &[("TargetAddress", "10.0.0.2")]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the target redirects to 10.0.0.2:3260,1 (permanently)"
        );
        let (mut l, f) = first();
        assert!(matches!(
            l.on_response(&status(&f, 0x0101, &[])),
            Err(LoginError::Protocol(_))
        ));
        for (code, want) in [
            (0x0203, LoginError::TargetNotFound),
            (0x0204, LoginError::TargetRemoved),
            (0x0202, LoginError::NotAuthorized),
            (0x0301, LoginError::TargetBusy { status: 0x0301 }),
            (
                0x0206,
                LoginError::Rejected {
                    status: 0x0206,
                    reason: "too many connections",
                },
            ),
        ] {
            let (mut l, f) = first();
            assert_eq!(l.on_response(&status(&f, code, &[])), Err(want));
        }
    }

    #[test]
    fn target_that_never_transits() {
        let (mut login, first) = Login::start(config(None), [0; 33]).unwrap();
        let mut req = send(login.on_response(&resp(&first, true, &[("AuthMethod", "None")])));
        let mut n = 1;
        loop {
            match login.on_response(&resp(&req, false, &[])) {
                Ok(Step::Send(r)) => {
                    assert!(r.transit);
                    req = r;
                    n += 1;
                }
                Err(LoginError::Protocol(m)) => {
                    assert!(m.contains("did not finish"), "{m}");
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(n, MAX_EXCHANGES);
    }

    #[test]
    fn continued_text_and_unasked_keys() {
        let (mut login, first) = Login::start(config(None), [0; 33]).unwrap();
        let mut part = resp(&first, false, &[]);
        part.continue_flag = true;
        part.data = b"AuthMeth".to_vec();
        let empty = send(login.on_response(&part));
        assert_eq!(
            (empty.transit, empty.csg, empty.data.len()),
            (false, Stage::Security, 0)
        );
        let mut rest = resp(&empty, false, &[]);
        rest.data = b"od=None\0".to_vec();
        let t = send(login.on_response(&rest));
        assert!(t.transit && t.data.is_empty());
        let op = send(login.on_response(&resp(&t, true, &[])));
        // The target offers keys of its own and does not transit yet.
        let again = send(login.on_response(&resp(
            &op,
            false,
            &[("X-vendor.key", "1"), ("IFMarker", "No")],
        )));
        let k = keys(&again);
        assert_eq!(key(&k, "X-vendor.key"), "NotUnderstood");
        assert_eq!(key(&k, "IFMarker"), "NotUnderstood");
        let n = finish(&mut login, &again);
        assert_eq!(n.params.max_send_data_segment_length, 65536);
    }

    #[test]
    fn protocol_violations() {
        // T and C together; an unasked stage; another ITT; a bad result.
        let (mut l, f) = Login::start(config(None), [0; 33]).unwrap();
        let mut r = resp(&f, true, &[]);
        r.continue_flag = true;
        assert!(matches!(l.on_response(&r), Err(LoginError::Protocol(_))));
        let (mut l, f) = Login::start(config(None), [0; 33]).unwrap();
        let mut r = resp(&f, true, &[]);
        r.nsg = Stage::FullFeature;
        assert!(matches!(l.on_response(&r), Err(LoginError::Protocol(_))));
        let (mut l, f) = Login::start(config(None), [0; 33]).unwrap();
        let mut r = resp(&f, true, &[]);
        r.itt = 99;
        assert!(matches!(l.on_response(&r), Err(LoginError::Protocol(_))));
        let (mut l, f) = Login::start(config(one_way()), [0; 33]).unwrap();
        assert!(matches!(
            l.on_response(&resp(&f, true, &[("AuthMethod", "CHAP")])),
            Err(LoginError::Protocol(_))
        ));
        for (k, v) in [
            ("MaxBurstLength", "16777215"),
            ("ImmediateData", "Maybe"),
            ("InitialR2T", "No"),
            ("HeaderDigest", "CRC32C"),
            ("MaxRecvDataSegmentLength", "1"),
        ] {
            let (mut l, f) = Login::start(config(None), [0; 33]).unwrap();
            let op = send(l.on_response(&resp(&f, true, &[])));
            let mut answers: Vec<(&str, &str)> =
                TARGET_OP.iter().filter(|(x, _)| *x != k).copied().collect();
            answers.push((k, v));
            let mut p = config(None).params;
            p.initial_r2t = true;
            l.config.params = p;
            let e = l.on_response(&resp(&op, true, &answers));
            assert!(matches!(e, Err(LoginError::Protocol(_))), "{k}={v}: {e:?}");
        }
    }

    #[test]
    fn discovery_session_and_digests() {
        let mut c = config(None);
        c.target_name = None;
        c.params.header_digest = true;
        let (mut login, first) = Login::start(c, [0; 33]).unwrap();
        let k = keys(&first);
        assert_eq!(key(&k, "SessionType"), "Discovery");
        assert!(text::get(&k, "TargetName").is_none());
        let op = send(login.on_response(&resp(&first, true, &[])));
        let k = keys(&op);
        assert_eq!(key(&k, "HeaderDigest"), "CRC32C,None");
        assert!(text::get(&k, "MaxBurstLength").is_none());
        let Ok(Step::Done(n)) = login.on_response(&resp(&op, true, &[("HeaderDigest", "CRC32C")]))
        else {
            panic!()
        };
        assert!(n.params.header_digest && !n.params.data_digest);
        assert_eq!(n.params.max_send_data_segment_length, 8192);
    }

    #[test]
    fn bad_configs() {
        let mut c = config(mutual());
        if let Some(ch) = c.chap.as_mut() {
            ch.mutual.as_mut().unwrap().secret = Secret::new("tecmint_chap12");
        }
        let e = Login::start(c, [0; 33]).unwrap_err();
        assert!(matches!(e, LoginError::Config(_)));
        assert!(!e.to_string().contains("tecmint_chap12"));
        let mut c = config(None);
        c.initiator_name = String::new();
        assert!(Login::start(c, [0; 33]).is_err());
        let mut c = config(None);
        c.params.max_recv_data_segment_length = 100;
        assert!(Login::start(c, [0; 33]).is_err());
    }
}
