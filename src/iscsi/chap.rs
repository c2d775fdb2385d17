//! CHAP (RFC 1994) as iSCSI uses it (RFC 7143 §12.1.3): the digest
//! algorithms, responses, constant-time verification, challenge checks
//! and the [`Secret`] type that never prints its bytes.

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Longest challenge we accept.
pub const MAX_CHALLENGE_LEN: usize = 1024;

/// CHAP digest algorithms (the `CHAP_A` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChapAlgorithm {
    /// MD5 (5); every target has it.
    Md5,
    /// SHA-1 (6).
    Sha1,
    /// SHA-256 (7).
    Sha256,
}

impl ChapAlgorithm {
    /// Ours, strongest first: the order of our `CHAP_A` offer.
    pub const PREFERENCE: [ChapAlgorithm; 3] = [
        ChapAlgorithm::Sha256,
        ChapAlgorithm::Sha1,
        ChapAlgorithm::Md5,
    ];

    /// The `CHAP_A` number.
    pub fn code(self) -> u8 {
        match self {
            ChapAlgorithm::Md5 => 5,
            ChapAlgorithm::Sha1 => 6,
            ChapAlgorithm::Sha256 => 7,
        }
    }

    /// The algorithm of a `CHAP_A` number.
    pub fn from_code(code: u32) -> Option<ChapAlgorithm> {
        match code {
            5 => Some(ChapAlgorithm::Md5),
            6 => Some(ChapAlgorithm::Sha1),
            7 => Some(ChapAlgorithm::Sha256),
            _ => None,
        }
    }

    /// Our `CHAP_A` offer: `7,6,5`.
    pub fn offer() -> String {
        Self::offer_of(&Self::PREFERENCE)
    }

    /// A `CHAP_A` list of these algorithms, in this order.
    pub fn offer_of(algs: &[ChapAlgorithm]) -> String {
        algs.iter()
            .map(|a| a.code().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The algorithms of [`Self::PREFERENCE`] weaker than `self`.
    pub fn weaker(self) -> Vec<ChapAlgorithm> {
        Self::PREFERENCE
            .into_iter()
            .skip_while(|a| *a != self)
            .skip(1)
            .collect()
    }

    /// The strongest of ours in a `CHAP_A` list (a target's offer, or its
    /// single choice from ours).
    pub fn choose(list: &str) -> Option<ChapAlgorithm> {
        let theirs: Vec<ChapAlgorithm> = list
            .split(',')
            .filter_map(|c| c.trim().parse::<u32>().ok())
            .filter_map(ChapAlgorithm::from_code)
            .collect();
        Self::PREFERENCE.into_iter().find(|a| theirs.contains(a))
    }

    /// The digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            ChapAlgorithm::Md5 => 16,
            ChapAlgorithm::Sha1 => 20,
            ChapAlgorithm::Sha256 => 32,
        }
    }

    /// The CHAP response H(id ‖ secret ‖ challenge).
    pub fn response(self, id: u8, secret: &Secret, challenge: &[u8]) -> Vec<u8> {
        fn h<D: Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            d.update([id]);
            d.update(secret);
            d.update(challenge);
            d.finalize().to_vec()
        }
        match self {
            ChapAlgorithm::Md5 => h::<Md5>(id, &secret.0, challenge),
            ChapAlgorithm::Sha1 => h::<Sha1>(id, &secret.0, challenge),
            ChapAlgorithm::Sha256 => h::<Sha256>(id, &secret.0, challenge),
        }
    }

    /// Whether `received` is the right response, compared in constant
    /// time.
    pub fn verify(self, id: u8, secret: &Secret, challenge: &[u8], received: &[u8]) -> bool {
        constant_time_eq(&self.response(id, secret, challenge), received)
    }
}

/// Compares in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// What is wrong with a CHAP exchange.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChapError {
    /// An empty challenge.
    #[error("empty CHAP challenge")]
    EmptyChallenge,
    /// A challenge longer than [`MAX_CHALLENGE_LEN`].
    #[error("CHAP challenge of {0} bytes, more than {MAX_CHALLENGE_LEN}")]
    ChallengeTooLong(usize),
    /// The target's challenge is the one we sent (a reflection attack).
    #[error("the target sent back our own CHAP challenge")]
    ReflectedChallenge,
}

/// Checks a challenge received from the peer.
pub fn check_challenge(challenge: &[u8]) -> Result<(), ChapError> {
    if challenge.is_empty() {
        return Err(ChapError::EmptyChallenge);
    }
    if challenge.len() > MAX_CHALLENGE_LEN {
        return Err(ChapError::ChallengeTooLong(challenge.len()));
    }
    Ok(())
}

/// A CHAP secret. Its Debug and Display print `***`, never the bytes;
/// they are zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret from its bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_match_python_hashlib() {
        // python3: hashlib.md5(bytes([1]) + b"tecmint_chap12" + bytes(range(16))).hexdigest()
        let s = Secret::new("tecmint_chap12");
        let c: Vec<u8> = (0u8..16).collect();
        let hex = |v: Vec<u8>| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(ChapAlgorithm::Md5.response(1, &s, &c)),
            "ee21a05f2cffd889b4fbfbdad93ebc62"
        );
        assert_eq!(
            hex(ChapAlgorithm::Sha1.response(0x2a, &s, &c)),
            "7485c71ca60c49435a3e815392b308d6b2262709"
        );
        assert_eq!(
            hex(ChapAlgorithm::Sha256.response(0xff, &s, &c)),
            "7054200269ea67074c70956e6823243eb89f72411b882bc6a6bc7c702911bf2d"
        );
        for a in ChapAlgorithm::PREFERENCE {
            let r = a.response(9, &s, &c);
            assert_eq!(r.len(), a.digest_len());
            assert!(a.verify(9, &s, &c, &r));
            assert!(!a.verify(9, &s, &c, &r[1..]));
            assert!(!a.verify(8, &s, &c, &r));
            assert!(!a.verify(9, &Secret::new("other"), &c, &r));
        }
    }

    #[test]
    fn algorithm_choice() {
        assert_eq!(ChapAlgorithm::offer(), "7,6,5");
        assert_eq!(ChapAlgorithm::choose("5"), Some(ChapAlgorithm::Md5));
        assert_eq!(ChapAlgorithm::choose("5,7"), Some(ChapAlgorithm::Sha256));
        assert_eq!(ChapAlgorithm::choose("6, 5"), Some(ChapAlgorithm::Sha1));
        assert_eq!(ChapAlgorithm::choose("8,x"), None);
        assert_eq!(ChapAlgorithm::choose(""), None);
    }

    #[test]
    fn challenges() {
        assert_eq!(check_challenge(&[]), Err(ChapError::EmptyChallenge));
        assert_eq!(
            check_challenge(&[0; 1025]),
            Err(ChapError::ChallengeTooLong(1025))
        );
        assert!(check_challenge(&[0; 1024]).is_ok());
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("tecmint_chap12");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert!(!format!("{:?}", Some(s.clone())).contains("tecmint"));
        assert_eq!(s.len(), 14);
    }
}
