//! API keys: the keys file's format, making a key, and finding the entry a presented key
//! belongs to. Pure: reading and writing the file is the caller's (`lamina keys`, the
//! node's access layer).
//!
//! The file holds only blake3 hashes of the keys, so a copy of it (a backup, a testnet
//! folder) does not let anyone call the API. A key is shown once, when made.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The prefix of every key: it tells a lamina key apart from other secrets in a
/// client's configuration (and in secret scanners).
pub const KEY_PREFIX: &str = "lam-";

/// Random bytes of a key: 256 bits, hex after the prefix.
pub const KEY_BYTES: usize = 32;

/// The version of the keys file this code writes and reads.
pub const KEYS_FILE_VERSION: u32 = 1;

/// The longest key name: it appears in every audit line and log.
pub const MAX_NAME_LEN: usize = 64;

/// Why a keys file or a key name is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeysError {
    #[error("the keys file is not valid JSON of version {KEYS_FILE_VERSION}: {0}")]
    Parse(String),
    #[error("the keys file has version {0}; this lamina reads version {KEYS_FILE_VERSION}")]
    Version(u32),
    #[error("key `{0}` is not a blake3 hash in hex (64 characters)")]
    BadHash(String),
    #[error("the name `{0}` appears twice in the keys file")]
    DuplicateName(String),
    #[error("a key named `{0}` exists already")]
    Exists(String),
    #[error("no key is named `{0}`")]
    NotFound(String),
    #[error("`{0}` is not a key name: 1 to {MAX_NAME_LEN} letters, digits, `-`, `_`, `.` or `@`")]
    BadName(String),
    #[error("a limit of 0 would refuse every request; leave the limit out for none")]
    ZeroLimit,
}

/// What one key may use. `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Requests per minute (a sliding window of 60 s).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens (prompt and completion) per UTC day.
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    /// Requests in flight at once.
    #[serde(default)]
    pub concurrent: Option<u32>,
}

impl Limits {
    /// Refuses zero limits: they would make a key that can never be used, which is what
    /// revoking is for.
    pub fn check(&self) -> Result<(), KeysError> {
        let zero =
            self.rpm == Some(0) || self.tokens_per_day == Some(0) || self.concurrent == Some(0);
        if zero {
            return Err(KeysError::ZeroLimit);
        }
        Ok(())
    }
}

/// One key of the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// Who the key is for; what audit lines and `/v1/usage` name.
    pub name: String,
    /// blake3 of the key's text, hex.
    pub hash: String,
    #[serde(default)]
    pub limits: Limits,
    /// When it was made, seconds since the Unix epoch.
    #[serde(default)]
    pub created: u64,
}

/// The keys file: `{"version": 1, "keys": [KeyEntry...]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysFile {
    pub version: u32,
    pub keys: Vec<KeyEntry>,
}

/// A checked keys file with its hashes decoded, ready for lookups.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    entries: Vec<(blake3::Hash, KeyEntry)>,
}

/// The hash stored for `key`.
pub fn hash_key(key: &str) -> blake3::Hash {
    blake3::hash(key.as_bytes())
}

/// A key from `random` bytes (the caller draws them from the OS's generator).
pub fn key_from_bytes(random: &[u8; KEY_BYTES]) -> String {
    let mut s = String::with_capacity(KEY_PREFIX.len() + 2 * KEY_BYTES);
    s.push_str(KEY_PREFIX);
    for b in random {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Key names are plain, so they can stand in logs and JSON lines unescaped.
pub fn check_name(name: &str) -> Result<(), KeysError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(KeysError::BadName(name.to_owned()))
    }
}

impl KeysFile {
    pub fn new() -> Self {
        Self {
            version: KEYS_FILE_VERSION,
            keys: Vec::new(),
        }
    }

    /// Parses and checks the file's text.
    pub fn parse(text: &str) -> Result<Self, KeysError> {
        let f: KeysFile =
            serde_json::from_str(text).map_err(|e| KeysError::Parse(e.to_string()))?;
        f.check()?;
        Ok(f)
    }

    /// The file's text (pretty: operators read it).
    pub fn to_text(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    fn check(&self) -> Result<(), KeysError> {
        if self.version != KEYS_FILE_VERSION {
            return Err(KeysError::Version(self.version));
        }
        let mut names = BTreeSet::new();
        for k in &self.keys {
            check_name(&k.name)?;
            k.limits.check()?;
            parse_hash(&k.hash)?;
            if !names.insert(k.name.as_str()) {
                return Err(KeysError::DuplicateName(k.name.clone()));
            }
        }
        Ok(())
    }

    /// Adds a key named `name` for `key` (whose text is not kept).
    pub fn add(
        &mut self,
        name: &str,
        key: &str,
        limits: Limits,
        now_secs: u64,
    ) -> Result<(), KeysError> {
        check_name(name)?;
        limits.check()?;
        if self.keys.iter().any(|k| k.name == name) {
            return Err(KeysError::Exists(name.to_owned()));
        }
        self.keys.push(KeyEntry {
            name: name.to_owned(),
            hash: hash_key(key).to_hex().to_string(),
            limits,
            created: now_secs,
        });
        Ok(())
    }

    /// Removes the key named `name`.
    pub fn revoke(&mut self, name: &str) -> Result<KeyEntry, KeysError> {
        let i = self
            .keys
            .iter()
            .position(|k| k.name == name)
            .ok_or_else(|| KeysError::NotFound(name.to_owned()))?;
        Ok(self.keys.remove(i))
    }

    /// The ring for lookups.
    pub fn ring(&self) -> Result<KeyRing, KeysError> {
        self.check()?;
        let mut entries = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            entries.push((parse_hash(&k.hash)?, k.clone()));
        }
        Ok(KeyRing { entries })
    }
}

fn parse_hash(hex: &str) -> Result<blake3::Hash, KeysError> {
    blake3::Hash::from_hex(hex).map_err(|_| KeysError::BadHash(hex.to_owned()))
}

impl KeyRing {
    /// The entry `key` belongs to. blake3's `Hash` compares in constant time, and every
    /// entry is compared, so the time taken tells nothing about which bytes matched.
    pub fn find(&self, key: &str) -> Option<&KeyEntry> {
        let h = hash_key(key);
        let mut found = None;
        for (stored, entry) in &self.entries {
            if *stored == h && found.is_none() {
                found = Some(entry);
            }
        }
        found
    }

    /// The entry named `name`.
    pub fn by_name(&self, name: &str) -> Option<&KeyEntry> {
        self.entries.iter().map(|(_, e)| e).find(|e| e.name == name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: u32) -> Limits {
        Limits {
            rpm: Some(rpm),
            ..Limits::default()
        }
    }

    #[test]
    fn keys_have_the_prefix_and_256_random_bits_in_hex() {
        let k = key_from_bytes(&[0xab; KEY_BYTES]);
        assert!(k.starts_with("lam-"));
        assert_eq!(k.len(), 4 + 64);
        assert_eq!(&k[4..8], "abab");
    }

    #[test]
    fn the_file_keeps_hashes_only_and_finds_keys_by_them() {
        let mut f = KeysFile::new();
        let a = key_from_bytes(&[1; KEY_BYTES]);
        let b = key_from_bytes(&[2; KEY_BYTES]);
        f.add("alice", &a, limits(5), 7).unwrap();
        f.add("bob", &b, Limits::default(), 8).unwrap();
        let text = f.to_text();
        assert!(!text.contains(&a[4..]), "{text}");
        let back = KeysFile::parse(&text).unwrap();
        assert_eq!(back, f);
        let ring = back.ring().unwrap();
        assert_eq!(ring.find(&a).map(|e| e.name.as_str()), Some("alice"));
        assert_eq!(ring.find(&b).map(|e| e.name.as_str()), Some("bob"));
        assert_eq!(ring.find(&a).unwrap().limits.rpm, Some(5));
        assert!(ring.find("lam-00").is_none());
        assert!(ring.find("").is_none());
        assert_eq!(ring.by_name("bob").map(|e| e.created), Some(8));
    }

    #[test]
    fn names_are_unique_and_plain_and_revoking_removes() {
        let mut f = KeysFile::new();
        f.add("alice", "k1", Limits::default(), 0).unwrap();
        assert_eq!(
            f.add("alice", "k2", Limits::default(), 0),
            Err(KeysError::Exists("alice".into()))
        );
        for bad in ["", "a b", "a\"b", "ü", &"x".repeat(65)] {
            assert!(f.add(bad, "k", Limits::default(), 0).is_err(), "{bad}");
        }
        assert_eq!(f.add("z", "k", limits(0), 0), Err(KeysError::ZeroLimit));
        assert_eq!(f.revoke("alice").map(|e| e.name), Ok("alice".into()));
        assert_eq!(f.revoke("alice"), Err(KeysError::NotFound("alice".into())));
        assert!(f.ring().unwrap().find("k1").is_none());
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(matches!(KeysFile::parse("{"), Err(KeysError::Parse(_))));
        assert_eq!(
            KeysFile::parse(r#"{"version":2,"keys":[]}"#),
            Err(KeysError::Version(2))
        );
        assert!(matches!(
            KeysFile::parse(r#"{"version":1,"keys":[{"name":"a","hash":"zz"}]}"#),
            Err(KeysError::BadHash(_))
        ));
        let h = hash_key("x").to_hex().to_string();
        let dup = format!(
            r#"{{"version":1,"keys":[{{"name":"a","hash":"{h}"}},{{"name":"a","hash":"{h}"}}]}}"#
        );
        assert_eq!(
            KeysFile::parse(&dup),
            Err(KeysError::DuplicateName("a".into()))
        );
        // Limits may be left out.
        let one = format!(r#"{{"version":1,"keys":[{{"name":"a","hash":"{h}"}}]}}"#);
        let f = KeysFile::parse(&one).unwrap();
        assert_eq!(f.keys[0].limits, Limits::default());
    }
}
