//! SNMPv3 User-based Security Model (USM): users and their keys, message
//! authentication and privacy, and Raven's own SNMP engine (the
//! authoritative side of the informs sent to it).
//!
//! Invariants:
//! - Passphrases and keys stay inside this module: no `Debug` prints them,
//!   no log line, record field or error detail carries them.
//! - Memory is bounded whatever senders make up: a user's master keys (Ku)
//!   are computed once when the decoder is built; keys localised to an
//!   engine are cached per (user, engine ID) up to [`KEY_CACHE_MAX`]
//!   entries, then the cache starts over.
//! - Nothing here panics on wire input: lengths are checked before every
//!   slice, and a cipher is only handed what it accepts.
//! - Raven's engine boots only go up: [`LocalEngine::load`] persists the
//!   count (fsync, rename) before the engine answers anything.
//!
//! Protocol:
//! - Password to key (RFC 3414 A.2): the passphrase repeated to 1 MiB and
//!   hashed with the authentication protocol's hash gives Ku; the key
//!   localised to an engine is Kul = H(Ku ‖ engineID ‖ Ku). The privacy key
//!   is made the same way from the privacy passphrase, with the
//!   *authentication* protocol's hash. RFC 7860 uses the same algorithm for
//!   SHA-2.
//! - Authentication: HMAC over the whole message with
//!   msgAuthenticationParameters set to zeros, truncated to 12 bytes
//!   (HMAC-MD5-96, HMAC-SHA-96) or 16/24/32/48 (HMAC-SHA-224/256/384/512,
//!   RFC 7860).
//! - DES-CBC (RFC 3414 8.1.1): key Kul[0..8], IV Kul[8..16] XOR the salt
//!   (msgPrivacyParameters, 8 bytes); what Raven encrypts is salted with
//!   its engine boots and a counter.
//! - AES-128-CFB (RFC 3826): key Kul[0..16], IV engineBoots ‖ engineTime ‖
//!   salt (the 64-bit msgPrivacyParameters); Raven's salt is a counter
//!   started at a random value.
//!
//! Operations: [`User::new`] (Ku, once), [`Usm::candidates`] (keys for a
//! message's user and engine), [`LocalKeys`] (verify, sign, decrypt,
//! encrypt), [`LocalEngine`] (Raven's engine ID, boots, time and the
//! usmStats counters its Report PDUs carry).

use std::{
    collections::HashMap,
    fmt,
    ops::Range,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Instant,
};

use cbc::cipher::{
    AsyncStreamCipher, BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding,
};
use hmac::{Hmac, Mac};
use sha2::Digest;

/// Localised keys kept at most (each a few dozen bytes).
pub const KEY_CACHE_MAX: usize = 1024;

/// Runs `$body` with `$D` the hash type of an [`AuthProtocol`].
macro_rules! with_hash {
    ($protocol:expr, $D:ident => $body:expr) => {
        match $protocol {
            AuthProtocol::Md5 => {
                type $D = md5::Md5;
                $body
            }
            AuthProtocol::Sha1 => {
                type $D = sha1::Sha1;
                $body
            }
            AuthProtocol::Sha224 => {
                type $D = sha2::Sha224;
                $body
            }
            AuthProtocol::Sha256 => {
                type $D = sha2::Sha256;
                $body
            }
            AuthProtocol::Sha384 => {
                type $D = sha2::Sha384;
                $body
            }
            AuthProtocol::Sha512 => {
                type $D = sha2::Sha512;
                $body
            }
        }
    };
}

/// usmHMACMD5AuthProtocol, usmHMACSHAAuthProtocol and RFC 7860's SHA-2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthProtocol {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl AuthProtocol {
    /// The configuration's names (`sha` is Net-SNMP's name for SHA-1).
    pub const NAMES: &'static str = "md5, sha1 (or sha), sha224, sha256, sha384, sha512";

    pub fn from_name(name: &str) -> Option<AuthProtocol> {
        Some(match name {
            "md5" => AuthProtocol::Md5,
            "sha" | "sha1" => AuthProtocol::Sha1,
            "sha224" => AuthProtocol::Sha224,
            "sha256" => AuthProtocol::Sha256,
            "sha384" => AuthProtocol::Sha384,
            "sha512" => AuthProtocol::Sha512,
            _ => return None,
        })
    }

    /// Bytes of msgAuthenticationParameters (the truncated HMAC).
    pub fn mac_len(self) -> usize {
        match self {
            AuthProtocol::Md5 | AuthProtocol::Sha1 => 12,
            AuthProtocol::Sha224 => 16,
            AuthProtocol::Sha256 => 24,
            AuthProtocol::Sha384 => 32,
            AuthProtocol::Sha512 => 48,
        }
    }

    fn hash(self, parts: &[&[u8]]) -> Vec<u8> {
        with_hash!(self, D => {
            let mut d = D::new();
            for part in parts {
                d.update(part);
            }
            d.finalize().to_vec()
        })
    }

    fn hmac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        with_hash!(self, D => {
            // HMAC takes keys of any length: this cannot fail.
            match <Hmac<D> as Mac>::new_from_slice(key) {
                Ok(mut mac) => {
                    mac.update(message);
                    mac.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            }
        })
    }

    /// Ku (RFC 3414 A.2.1 / A.2.2): the passphrase repeated over 1 MiB, hashed.
    pub fn password_to_key(self, passphrase: &[u8]) -> Vec<u8> {
        if passphrase.is_empty() {
            // Refused by the configuration; never a division by zero here.
            return self.hash(&[]);
        }
        with_hash!(self, D => {
            let mut d = D::new();
            let mut chunk = [0u8; 64];
            let mut at = 0usize;
            for _ in 0..(1usize << 20) / chunk.len() {
                for b in chunk.iter_mut() {
                    *b = passphrase[at % passphrase.len()];
                    at += 1;
                }
                d.update(chunk);
            }
            d.finalize().to_vec()
        })
    }

    /// Kul = H(Ku ‖ engineID ‖ Ku).
    pub fn localize(self, ku: &[u8], engine_id: &[u8]) -> Vec<u8> {
        self.hash(&[ku, engine_id, ku])
    }
}

/// usmDESPrivProtocol and usmAesCfb128Protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrivProtocol {
    Des,
    Aes128,
}

impl PrivProtocol {
    pub const NAMES: &'static str = "des, aes128 (or aes)";

    pub fn from_name(name: &str) -> Option<PrivProtocol> {
        Some(match name {
            "des" => PrivProtocol::Des,
            "aes" | "aes128" => PrivProtocol::Aes128,
            _ => return None,
        })
    }

    /// Why the ciphertext cannot be decrypted, or the plaintext (with any
    /// DES padding still at its end).
    fn decrypt(
        self,
        key: &[u8],
        boots: u32,
        time: u32,
        salt: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, &'static str> {
        let salt: [u8; 8] = salt.try_into().map_err(|_| "msgPrivacyParameters is not 8 bytes")?;
        let mut buf = ciphertext.to_vec();
        match self {
            PrivProtocol::Des => {
                let (Some(des_key), Some(pre_iv)) = (key.get(..8), key.get(8..16)) else {
                    return Err("privacy key too short");
                };
                if buf.is_empty() || !buf.len().is_multiple_of(8) {
                    return Err("DES ciphertext is not a whole number of 8-byte blocks");
                }
                let iv: Vec<u8> = pre_iv.iter().zip(salt).map(|(p, s)| p ^ s).collect();
                let cipher = cbc::Decryptor::<des::Des>::new_from_slices(des_key, &iv)
                    .map_err(|_| "bad DES key length")?;
                cipher
                    .decrypt_padded_mut::<NoPadding>(&mut buf)
                    .map_err(|_| "DES decryption failed")?;
            }
            PrivProtocol::Aes128 => {
                let aes_key = key.get(..16).ok_or("privacy key too short")?;
                let iv = aes_iv(boots, time, salt);
                let cipher = cfb_mode::Decryptor::<aes::Aes128>::new_from_slices(aes_key, &iv)
                    .map_err(|_| "bad AES key length")?;
                cipher.decrypt(&mut buf);
            }
        }
        Ok(buf)
    }

    /// The ciphertext of `plaintext` with `salt` (DES pads with zeros to
    /// whole blocks; the receiver ignores bytes after the scoped PDU).
    fn encrypt(
        self,
        key: &[u8],
        boots: u32,
        time: u32,
        salt: [u8; 8],
        plaintext: &[u8],
    ) -> Option<Vec<u8>> {
        let mut buf = plaintext.to_vec();
        match self {
            PrivProtocol::Des => {
                let (des_key, pre_iv) = (key.get(..8)?, key.get(8..16)?);
                let len = buf.len();
                buf.resize(len.div_ceil(8).max(1) * 8, 0);
                let iv: Vec<u8> = pre_iv.iter().zip(salt).map(|(p, s)| p ^ s).collect();
                let cipher = cbc::Encryptor::<des::Des>::new_from_slices(des_key, &iv).ok()?;
                let full = buf.len();
                cipher.encrypt_padded_mut::<NoPadding>(&mut buf, full).ok()?;
            }
            PrivProtocol::Aes128 => {
                let iv = aes_iv(boots, time, salt);
                let cipher =
                    cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(key.get(..16)?, &iv)
                        .ok()?;
                cipher.encrypt(&mut buf);
            }
        }
        Some(buf)
    }
}

fn aes_iv(boots: u32, time: u32, salt: [u8; 8]) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..4].copy_from_slice(&boots.to_be_bytes());
    iv[4..8].copy_from_slice(&time.to_be_bytes());
    iv[8..].copy_from_slice(&salt);
    iv
}

/// One configured USM user: its master keys, never its passphrases.
pub struct User {
    pub name: String,
    /// Only messages whose authoritative engine is this one; `None`: any.
    pub engine_id: Option<Vec<u8>>,
    auth: AuthProtocol,
    auth_ku: Vec<u8>,
    privacy: Option<(PrivProtocol, Vec<u8>)>,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("engine_id", &self.engine_id.as_deref().map(hex))
            .field("auth", &self.auth)
            .field("privacy", &self.privacy.as_ref().map(|(p, _)| p))
            .finish_non_exhaustive()
    }
}

impl User {
    /// Computes Ku for both passphrases (1 MiB of hashing each).
    pub fn new(
        name: &str,
        engine_id: Option<Vec<u8>>,
        auth: AuthProtocol,
        auth_passphrase: &[u8],
        privacy: Option<(PrivProtocol, &[u8])>,
    ) -> User {
        User {
            name: name.to_string(),
            engine_id,
            auth,
            auth_ku: auth.password_to_key(auth_passphrase),
            privacy: privacy.map(|(p, pass)| (p, auth.password_to_key(pass))),
        }
    }

    /// The user of a validated `[[decode.snmp_users]]` entry; `None` (and
    /// a log line naming the user, never a passphrase) for one that is not.
    pub fn from_config(config: &crate::config::SnmpUserConfig) -> Option<User> {
        let auth = AuthProtocol::from_name(&config.auth_protocol);
        let privacy = match config.priv_protocol.as_str() {
            "" => Some(None),
            name => PrivProtocol::from_name(name).map(Some),
        };
        let engine_id = match config.engine_id.as_str() {
            "" => Some(None),
            hex => parse_engine_id(hex).map(Some),
        };
        let (Some(auth), Some(privacy), Some(engine_id)) = (auth, privacy, engine_id) else {
            tracing::error!(user = %config.name, reason = "invalid",
                "SNMP USM user skipped: protocol or engine ID not understood");
            return None;
        };
        Some(User::new(
            &config.name,
            engine_id,
            auth,
            config.auth_passphrase.expose().as_bytes(),
            privacy.map(|p| (p, config.priv_passphrase.expose().as_bytes())),
        ))
    }

    fn localize(&self, engine_id: &[u8]) -> LocalKeys {
        LocalKeys {
            user: self.name.clone(),
            auth: self.auth,
            auth_key: self.auth.localize(&self.auth_ku, engine_id),
            privacy: self.privacy.as_ref().map(|(p, ku)| (*p, self.auth.localize(ku, engine_id))),
        }
    }
}

/// A user's keys localised to one engine.
pub struct LocalKeys {
    pub user: String,
    pub auth: AuthProtocol,
    auth_key: Vec<u8>,
    privacy: Option<(PrivProtocol, Vec<u8>)>,
}

impl fmt::Debug for LocalKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeys")
            .field("user", &self.user)
            .field("auth", &self.auth)
            .field("privacy", &self.privacy.as_ref().map(|(p, _)| p))
            .finish_non_exhaustive()
    }
}

impl LocalKeys {
    pub fn privacy(&self) -> Option<PrivProtocol> {
        self.privacy.as_ref().map(|(p, _)| *p)
    }

    /// Whether `message` (the whole message) carries this user's HMAC in
    /// `auth_at` (the bytes of msgAuthenticationParameters).
    pub fn verify(&self, message: &[u8], auth_at: Range<usize>) -> bool {
        let Some(received) = message.get(auth_at.clone()) else { return false };
        if received.len() != self.auth.mac_len() {
            return false;
        }
        let mut zeroed = message.to_vec();
        zeroed[auth_at].fill(0);
        let mac = self.auth.hmac(&self.auth_key, &zeroed);
        mac.get(..received.len())
            .is_some_and(|mac| constant_time_eq::constant_time_eq(mac, received))
    }

    /// Writes the HMAC into `auth_at`, which holds zeros of the right length.
    pub fn sign(&self, message: &mut [u8], auth_at: Range<usize>) -> bool {
        if auth_at.len() != self.auth.mac_len() || auth_at.end > message.len() {
            return false;
        }
        let mac = self.auth.hmac(&self.auth_key, message);
        match mac.get(..auth_at.len()) {
            Some(mac) => {
                message[auth_at].copy_from_slice(mac);
                true
            }
            None => false,
        }
    }

    /// The scoped PDU bytes of an encryptedPDU, or why not.
    pub fn decrypt(
        &self,
        boots: u32,
        time: u32,
        salt: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, &'static str> {
        let (protocol, key) = self.privacy.as_ref().ok_or("the user has no privacy key")?;
        protocol.decrypt(key, boots, time, salt, ciphertext)
    }

    /// (ciphertext, msgPrivacyParameters) for `plaintext`.
    pub fn encrypt(
        &self,
        boots: u32,
        time: u32,
        salt: [u8; 8],
        plaintext: &[u8],
    ) -> Option<Vec<u8>> {
        let (protocol, key) = self.privacy.as_ref()?;
        protocol.encrypt(key, boots, time, salt, plaintext)
    }
}

/// (user index, engine ID) → that user's keys localised to that engine.
type KeyCache = HashMap<(usize, Vec<u8>), Arc<LocalKeys>>;

/// The configured users and their localised keys.
#[derive(Default)]
pub struct Usm {
    users: Vec<User>,
    cache: Mutex<KeyCache>,
}

impl fmt::Debug for Usm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Usm").field("users", &self.users).finish_non_exhaustive()
    }
}

impl Usm {
    pub fn new(users: Vec<User>) -> Usm {
        Usm { users, cache: Mutex::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Keys of the users a message from `name` for `engine_id` may come
    /// from: those tied to that engine first, then those for any engine
    /// (several entries may share a name: each is tried).
    pub fn candidates(&self, name: &str, engine_id: &[u8]) -> Vec<Arc<LocalKeys>> {
        let mut matching: Vec<usize> = Vec::new();
        for specific in [true, false] {
            for (i, user) in self.users.iter().enumerate() {
                let fits = match &user.engine_id {
                    Some(e) => specific && e == engine_id,
                    None => !specific,
                };
                if user.name == name && fits {
                    matching.push(i);
                }
            }
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        matching
            .into_iter()
            .map(|i| {
                let key = (i, engine_id.to_vec());
                if let Some(keys) = cache.get(&key) {
                    return keys.clone();
                }
                let keys = Arc::new(self.users[i].localize(engine_id));
                if cache.len() >= KEY_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(key, keys.clone());
                keys
            })
            .collect()
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.cache.lock().unwrap().len()
    }
}

/// The usmStats counters a Report PDU carries (RFC 3414 section 5),
/// by their last OID arc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsmStat {
    UnsupportedSecLevels = 1,
    NotInTimeWindows = 2,
    UnknownUserNames = 3,
    UnknownEngineIds = 4,
    WrongDigests = 5,
    DecryptionErrors = 6,
}

impl UsmStat {
    /// `usmStats…​.0` = 1.3.6.1.6.3.15.1.1.N.0, BER-encoded OID content.
    pub fn oid(self) -> [u8; 10] {
        [0x2b, 0x06, 0x01, 0x06, 0x03, 0x0f, 0x01, 0x01, self as u8, 0x00]
    }
}

/// How Raven's engine time runs.
#[derive(Debug)]
pub enum Clock {
    /// Seconds since this instant (the agent's start).
    Since(Instant),
    /// Always this value (offline decoding and tests).
    Fixed(u32),
}

/// Raven's own SNMP engine: authoritative for the informs sent to it.
#[derive(Debug)]
pub struct LocalEngine {
    id: Vec<u8>,
    boots: u32,
    clock: Clock,
    stats: [AtomicU32; 6],
    /// Next privacy salt (unique per message under one key, RFC 3826 3.1.1.1).
    salt: AtomicU64,
}

/// snmpEngineBoots and snmpEngineTime stop here (RFC 3414 2.2.2).
const ENGINE_MAX: u32 = 2_147_483_647;

/// IANA enterprise 32473 (RFC 5612, documentation) with the RFC 3411 high
/// bit, then format 5 (octets): the prefix of a generated engine ID.
const GENERATED_PREFIX: [u8; 5] = [0x80, 0x00, 0x7e, 0xd9, 0x05];

/// The file in the data directory that holds the engine ID and boots.
pub const ENGINE_FILE: &str = "snmp-engine";

fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    if ring::rand::SystemRandom::new().fill(&mut out).is_err() {
        // No system randomness: still distinct per process and moment.
        let seed = fastrand::u64(..) ^ std::process::id() as u64;
        for (i, b) in out.iter_mut().enumerate() {
            *b = (seed >> ((i % 8) * 8)) as u8 ^ fastrand::u8(..);
        }
    }
    out
}

/// Hex text (`0x` prefix allowed) as bytes; an RFC 3411 engine ID has
/// 5 to 32 of them.
pub fn parse_engine_id(text: &str) -> Option<Vec<u8>> {
    let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
    if !digits.len().is_multiple_of(2) || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Vec<u8> = (0..digits.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&digits[i..i + 2], 16).ok())
        .collect();
    (5..=32).contains(&bytes.len()).then_some(bytes)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl LocalEngine {
    pub fn new(id: Vec<u8>, boots: u32, clock: Clock) -> LocalEngine {
        LocalEngine {
            id,
            boots: boots.min(ENGINE_MAX),
            clock,
            stats: Default::default(),
            salt: AtomicU64::new(u64::from_be_bytes(random_bytes())),
        }
    }

    /// An engine that is not persisted: the configured ID (hex, empty:
    /// generated), boots 1, time from now. For offline decoding, where
    /// nothing is answered.
    pub fn ephemeral(configured: &str) -> LocalEngine {
        let id = parse_engine_id(configured).unwrap_or_else(generated_id);
        LocalEngine::new(id, 1, Clock::Since(Instant::now()))
    }

    /// Raven's engine from `<data_dir>/snmp-engine`: the configured ID
    /// (hex; empty: the one generated at the first start and kept there),
    /// and boots one more than last time (1 for a new ID). The new count is
    /// durable before this returns, so a restart never reuses a boots value
    /// (RFC 3414 2.2.2: messages of an earlier run stay outside the time
    /// window).
    pub fn load(data_dir: &Path, configured: &str) -> std::io::Result<LocalEngine> {
        let path = data_dir.join(ENGINE_FILE);
        let (mut stored_id, mut stored_boots) = (None, 0u32);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("engine_id=") {
                        stored_id = parse_engine_id(v.trim());
                    } else if let Some(v) = line.strip_prefix("boots=") {
                        stored_boots = v.trim().parse().unwrap_or(0);
                    }
                }
                if stored_id.is_none() {
                    tracing::warn!(path = %path.display(), reason = "unreadable",
                        "the SNMP engine file holds no engine ID: starting a new one");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let id = match parse_engine_id(configured) {
            Some(id) => id,
            None => stored_id.clone().unwrap_or_else(generated_id),
        };
        let boots = if stored_id.as_ref() == Some(&id) {
            stored_boots.saturating_add(1).clamp(1, ENGINE_MAX)
        } else {
            1
        };
        let text = format!(
            "# Raven's SNMP engine (RFC 3414): its ID and how many times it started.\n\
             engine_id={}\nboots={boots}\n",
            hex(&id)
        );
        write_durably(&path, text.as_bytes())?;
        Ok(LocalEngine::new(id, boots, Clock::Since(Instant::now())))
    }

    pub fn id(&self) -> &[u8] {
        &self.id
    }

    pub fn boots(&self) -> u32 {
        self.boots
    }

    /// snmpEngineTime: seconds since the start.
    pub fn time(&self) -> u32 {
        match self.clock {
            Clock::Since(start) => {
                u32::try_from(start.elapsed().as_secs()).unwrap_or(ENGINE_MAX).min(ENGINE_MAX)
            }
            Clock::Fixed(t) => t,
        }
    }

    /// Whether a message stamped `boots`/`time` is within Raven's time
    /// window (RFC 3414 3.2 step 7a: same boots, time within 150 s).
    pub fn in_time_window(&self, boots: u32, time: u32) -> bool {
        self.boots < ENGINE_MAX && boots == self.boots && time.abs_diff(self.time()) <= 150
    }

    /// Counts one more `stat` and returns the new value.
    pub fn count(&self, stat: UsmStat) -> u32 {
        let counter = &self.stats[stat as usize - 1];
        counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    /// A fresh salt for one encrypted message.
    pub fn next_salt(&self, protocol: PrivProtocol) -> [u8; 8] {
        let n = self.salt.fetch_add(1, Ordering::Relaxed);
        match protocol {
            // RFC 3414 8.1.1.1: engineBoots, then a 32-bit counter.
            PrivProtocol::Des => {
                let mut salt = [0u8; 8];
                salt[..4].copy_from_slice(&self.boots.to_be_bytes());
                salt[4..].copy_from_slice(&(n as u32).to_be_bytes());
                salt
            }
            PrivProtocol::Aes128 => n.to_be_bytes(),
        }
    }
}

fn generated_id() -> Vec<u8> {
    let mut id = GENERATED_PREFIX.to_vec();
    id.extend(random_bytes::<12>());
    id
}

/// Temporary file, fsync, rename, fsync of the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        parse_engine_id(s).unwrap()
    }

    /// RFC 3414 A.3.1 / A.3.2: "maplesyrup", engine 000000000000000000000002.
    #[test]
    fn password_to_key_and_localisation_match_rfc_3414_appendix_a() {
        let engine = unhex("000000000000000000000002");
        let md5 = AuthProtocol::Md5.password_to_key(b"maplesyrup");
        assert_eq!(hex(&md5), "9faf3283884e92834ebc9847d8edd963");
        assert_eq!(
            hex(&AuthProtocol::Md5.localize(&md5, &engine)),
            "526f5eed9fcce26f8964c2930787d82b"
        );
        let sha = AuthProtocol::Sha1.password_to_key(b"maplesyrup");
        assert_eq!(hex(&sha), "9fb5cc0381497b3793528939ff788d5d79145211");
        assert_eq!(
            hex(&AuthProtocol::Sha1.localize(&sha, &engine)),
            "6695febc9288e36282235fc7151f128497b38f3f"
        );
    }

    #[test]
    fn every_cipher_round_trips_and_rejects_what_it_cannot_take() {
        let user = User::new(
            "u",
            None,
            AuthProtocol::Sha256,
            b"authpassphrase",
            Some((PrivProtocol::Des, b"privpassphrase")),
        );
        let keys = user.localize(&[0x80, 0, 0, 0, 1]);
        let plain = b"thirteen byte".to_vec();
        let salt = [1, 2, 3, 4, 5, 6, 7, 8];
        let ct = keys.encrypt(1, 2, salt, &plain).unwrap();
        assert_eq!(ct.len(), 16, "padded to whole DES blocks");
        assert_eq!(&keys.decrypt(1, 2, &salt, &ct).unwrap()[..13], &plain[..]);
        assert!(keys.decrypt(1, 2, &salt, &ct[..15]).is_err());
        assert!(keys.decrypt(1, 2, &salt[..7], &ct).is_err());
        assert!(keys.decrypt(1, 2, &salt, &[]).is_err());

        let aes = User::new(
            "u",
            None,
            AuthProtocol::Md5,
            b"authpassphrase",
            Some((PrivProtocol::Aes128, b"privpassphrase")),
        )
        .localize(&[0x80, 0, 0, 0, 1]);
        let ct = aes.encrypt(7, 9, salt, &plain).unwrap();
        assert_eq!(ct.len(), plain.len(), "CFB keeps the length");
        assert_eq!(aes.decrypt(7, 9, &salt, &ct).unwrap(), plain);
        assert_ne!(aes.decrypt(7, 10, &salt, &ct).unwrap(), plain, "the IV holds the time");
    }

    #[test]
    fn localised_keys_are_cached_per_user_and_engine_and_bounded() {
        let usm = Usm::new(vec![
            User::new("a", None, AuthProtocol::Md5, b"12345678", None),
            User::new("a", Some(vec![9; 5]), AuthProtocol::Sha1, b"abcdefgh", None),
        ]);
        let both = usm.candidates("a", &[9; 5]);
        assert_eq!(both.len(), 2);
        assert_eq!(both[0].auth, AuthProtocol::Sha1, "the engine's own entry first");
        assert_eq!(usm.candidates("a", &[8; 5]).len(), 1);
        assert!(usm.candidates("b", &[9; 5]).is_empty());
        for n in 0..(KEY_CACHE_MAX as u32 + 10) {
            usm.candidates("a", &n.to_be_bytes());
        }
        assert!(usm.cached() <= KEY_CACHE_MAX);
        let shown = format!("{usm:?}");
        assert!(!shown.contains("12345678") && shown.contains("Md5"), "{shown}");
    }

    #[test]
    fn boots_go_up_per_start_and_restart_with_a_new_id() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalEngine::load(dir.path(), "").unwrap();
        assert_eq!(first.boots(), 1);
        assert_eq!(&first.id()[..5], &GENERATED_PREFIX);
        let second = LocalEngine::load(dir.path(), "").unwrap();
        assert_eq!((second.id(), second.boots()), (first.id(), 2), "the generated ID is kept");
        let configured = LocalEngine::load(dir.path(), "0x8000000001020304").unwrap();
        assert_eq!((configured.id(), configured.boots()), (&unhex("8000000001020304")[..], 1));
        let again = LocalEngine::load(dir.path(), "8000000001020304").unwrap();
        assert_eq!(again.boots(), 2);
        std::fs::write(dir.path().join(ENGINE_FILE), "garbage").unwrap();
        assert_eq!(LocalEngine::load(dir.path(), "8000000001020304").unwrap().boots(), 1);
    }

    #[test]
    fn the_time_window_is_150_seconds_at_the_same_boots() {
        let engine = LocalEngine::new(vec![0x80, 0, 0, 0, 1], 3, Clock::Fixed(1000));
        assert!(engine.in_time_window(3, 1150) && engine.in_time_window(3, 850));
        assert!(!engine.in_time_window(3, 1151) && !engine.in_time_window(2, 1000));
        assert_eq!(engine.count(UsmStat::WrongDigests), 1);
        assert_eq!(engine.count(UsmStat::WrongDigests), 2);
        assert_eq!(engine.count(UsmStat::UnknownEngineIds), 1);
        let des = engine.next_salt(PrivProtocol::Des);
        assert_eq!(&des[..4], &3u32.to_be_bytes(), "DES salt starts with the boots");
        assert_ne!(engine.next_salt(PrivProtocol::Aes128), engine.next_salt(PrivProtocol::Aes128));
    }

    #[test]
    fn engine_ids_are_hex_of_5_to_32_bytes() {
        assert!(parse_engine_id("").is_none());
        assert!(parse_engine_id("80000000").is_none(), "4 bytes");
        assert!(parse_engine_id("0x8000000001020304").is_some());
        assert!(parse_engine_id("80000000010203g4").is_none());
        assert!(parse_engine_id(&"00".repeat(33)).is_none());
    }
}
