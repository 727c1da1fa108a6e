//! Identifiers: [`ModelId`], [`MeshKey`], [`SessionId`] and [`TraceId`].
//!
//! All are fixed-size byte arrays, shown and parsed as lowercase hex (upper case is
//! accepted when parsing). On the wire (bincode) they are their raw bytes with no length
//! prefix; in JSON (serde) they are hex strings, so configs, announcements and logs show the
//! same text as `Display`.

use std::fmt;
use std::str::FromStr;

use bincode::{Decode, Encode};

use crate::error::ProtocolError;

/// Writes `bytes` as lowercase hex.
fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Parses exactly `2 * N` hex digits into `N` bytes.
fn parse_hex<const N: usize>(what: &'static str, s: &str) -> Result<[u8; N], ProtocolError> {
    let digits = s.as_bytes();
    if digits.len() != 2 * N {
        return Err(ProtocolError::parse(
            what,
            s,
            "wrong length (expected hex digits for every byte)",
        ));
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        match (hex_val(pair[0]), hex_val(pair[1])) {
            (Some(hi), Some(lo)) => *byte = (hi << 4) | lo,
            _ => return Err(ProtocolError::parse(what, s, "not a hex digit")),
        }
    }
    Ok(out)
}

/// Defines a fixed-size id: newtype over `[u8; N]` with hex `Display`/`FromStr`/`Debug`,
/// bincode as raw bytes and serde as a hex string.
macro_rules! hex_id {
    ($(#[$meta:meta])* $name:ident, $n:literal, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
        pub struct $name(pub [u8; $n]);

        impl $name {
            /// Number of bytes in this id.
            pub const LEN: usize = $n;

            /// Wraps raw bytes.
            pub const fn from_bytes(bytes: [u8; $n]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; $n] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "("))?;
                write_hex(f, &self.0)?;
                write!(f, ")")
            }
        }

        impl FromStr for $name {
            type Err = ProtocolError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex::<$n>($what, s).map(Self)
            }
        }

        impl From<[u8; $n]> for $name {
            fn from(bytes: [u8; $n]) -> Self {
                Self(bytes)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    /// A model's identity: the blake3 hash of its manifest (the per-tensor hashes grouped by
    /// layer), so two nodes agree on a model exactly when they hold bit-identical weights.
    ModelId,
    32,
    "model id"
);

hex_id!(
    /// The Ed25519 public key of a mesh's authority: a private mesh *is* this key. Member
    /// certificates and revocations are signed by its private half, which only the
    /// operator keeps; every node holds the public half to check them.
    MeshKey,
    32,
    "mesh key"
);

hex_id!(
    /// Names one generation's session on one hop. 128 random bits chosen by the client: the
    /// same id is used on every hop of the chain, so logs of different nodes line up, and
    /// collisions between clients are negligible. 16 raw bytes on the wire (a `u128` would
    /// cost 17 as a bincode varint).
    SessionId,
    16,
    "session id"
);

hex_id!(
    /// Follows one request through the mesh: chosen at the entry (the HTTP API's request
    /// id, or a `generate` run), carried in every hop's `OpenSession` and shown in every
    /// hop's session span, so `grep <id>` over the nodes' logs finds the request on each
    /// hop, across the sessions a failover opens for it.
    TraceId,
    16,
    "trace id"
);

impl ModelId {
    /// The id of the model whose manifest serialises to `manifest_bytes`.
    pub fn of_manifest(manifest_bytes: &[u8]) -> Self {
        Self(*blake3::hash(manifest_bytes).as_bytes())
    }
}

impl SessionId {
    /// The id as a big-endian integer (its `Display` form reads the same).
    pub const fn as_u128(&self) -> u128 {
        u128::from_be_bytes(self.0)
    }
}

impl From<u128> for SessionId {
    /// Big-endian, so `SessionId::from(1)` displays as `000…001`.
    fn from(v: u128) -> Self {
        Self(v.to_be_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_id_hex_round_trip() {
        let id = ModelId::of_manifest(b"manifest");
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text, blake3::hash(b"manifest").to_hex().as_str());
        assert_eq!(text.parse::<ModelId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<ModelId>().unwrap(), id);
        assert!(format!("{id:?}").starts_with("ModelId("));
    }

    #[test]
    fn hex_parse_rejects_bad_input() {
        assert!(matches!(
            "abc".parse::<ModelId>(),
            Err(ProtocolError::Parse { .. })
        ));
        let mut text = "0".repeat(63);
        text.push('g');
        assert!("".parse::<MeshKey>().is_err());
        assert!(text.parse::<MeshKey>().is_err());
        // Multi-byte UTF-8 of the right byte length must not panic.
        let odd = "é".repeat(32);
        assert!(odd.parse::<ModelId>().is_err());
        assert!("zz".repeat(16).parse::<SessionId>().is_err());
    }

    #[test]
    fn session_id_display_and_u128() {
        let id = SessionId::from(0x0102_u128);
        assert_eq!(id.to_string(), format!("{:032x}", 0x0102));
        assert_eq!(id.as_u128(), 0x0102);
        assert_eq!(id.to_string().parse::<SessionId>().unwrap(), id);
    }

    #[test]
    fn serde_uses_hex_strings() {
        let fp = MeshKey::from_bytes([7; 32]);
        let json = serde_json::to_string(&fp).unwrap();
        assert_eq!(json, format!("\"{fp}\""));
        assert_eq!(serde_json::from_str::<MeshKey>(&json).unwrap(), fp);
        assert!(serde_json::from_str::<MeshKey>("\"00\"").is_err());
    }

    #[test]
    fn bincode_is_raw_bytes() {
        let id = SessionId::from(7_u128);
        let bytes = bincode::encode_to_vec(id, bincode::config::standard()).unwrap();
        assert_eq!(bytes.len(), 16);
    }
}
