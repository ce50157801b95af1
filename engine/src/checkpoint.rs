//! What a step's checkpoint holds, and the keys that seal sensitive ones.
//!
//! A checkpoint's `result` is the step's value as JSON, except for the forms Cairn writes
//! itself, marked by a top-level [`MARKER`] key:
//! - `{"$cairn": "sealed", "v": 1, "key": ID, "nonce": B64, "data": B64}`: the value of a step
//!   marked sensitive, encrypted (XChaCha20-Poly1305, the step's key as associated data) with
//!   its namespace's step key. Only flow processes hold that key, so the engine, the read API
//!   and every surface on them show that the value is sensitive and nothing more; the flow
//!   decrypts it when it replays the step.
//! - `{"$cairn": "value", "value": V}`: a plain value that is itself an object with a
//!   `"$cairn"` key, escaped so that it is never taken for one of Cairn's forms.
//!
//! Step keys: a launcher holds master keys (a Kubernetes Secret, or a file of `cairn dev`) and
//! gives each flow process the keys of its run's namespace, derived with HKDF-SHA256, so a
//! process (or a tenant reading its namespace's Secrets) can open only its namespace's values.
//! A key list is base64 keys of 32 bytes, separated by commas or white space: the first seals,
//! any opens, so keys rotate by putting a new one first.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// The key that marks Cairn's own forms of a checkpoint.
pub const MARKER: &str = "$cairn";
const SEALED: &str = "sealed";
const ESCAPED: &str = "value";

/// One 32-byte key.
#[derive(Clone, PartialEq, Eq)]
struct Key([u8; 32]);

impl Key {
    /// A short, public name of the key (a hash prefix): envelopes carry it, so a value sealed
    /// with a key this process lacks is named in the error.
    fn id(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"cairn step key id\0")
            .chain_update(self.0)
            .finalize();
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A list of keys: the first seals, any opens. Its `Debug` never shows key material.
#[derive(Clone, PartialEq, Eq)]
pub struct StepKeys(Vec<Key>);

impl std::fmt::Debug for StepKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self.0.iter().map(Key::id).collect();
        write!(f, "StepKeys({})", ids.join(", "))
    }
}

impl StepKeys {
    /// A list with one new random key (for a new master key).
    pub fn generate() -> StepKeys {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random source");
        StepKeys(vec![Key(key)])
    }

    /// Reads a key list (see the module's doc); the message says what is wrong, never a key.
    pub fn parse(text: &str) -> Result<StepKeys, String> {
        let keys = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|part| !part.is_empty())
            .enumerate()
            .map(|(i, part)| {
                let bytes = BASE64.decode(part).map_err(|_| {
                    format!(
                        "step key {} is not base64 (expected 32 bytes in base64)",
                        i + 1
                    )
                })?;
                let key: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| {
                    format!(
                        "step key {} has {} bytes; a step key has 32",
                        i + 1,
                        bytes.len()
                    )
                })?;
                Ok(Key(key))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if keys.is_empty() {
            return Err("the step key list is empty".into());
        }
        Ok(StepKeys(keys))
    }

    /// The list as [`parse`](Self::parse) reads it.
    pub fn encode(&self) -> String {
        let keys: Vec<String> = self.0.iter().map(|k| BASE64.encode(k.0)).collect();
        keys.join(",")
    }

    /// The keys a namespace's flow processes get, derived from these master keys (in order).
    pub fn for_namespace(&self, namespace: &str) -> StepKeys {
        StepKeys(
            self.0
                .iter()
                .map(|master| {
                    let hkdf = hkdf::Hkdf::<Sha256>::new(Some(b"cairn step keys v1"), &master.0);
                    let mut key = [0u8; 32];
                    hkdf.expand(namespace.as_bytes(), &mut key)
                        .expect("32 bytes is a valid HKDF-SHA256 output length");
                    Key(key)
                })
                .collect(),
        )
    }

    /// The id of the key that seals.
    pub fn sealing_key_id(&self) -> String {
        self.0[0].id()
    }

    /// `value`, sealed with the first key for the step `step_key` (its associated data, so a
    /// sealed value moved to another step does not open).
    pub fn seal(&self, step_key: &str, value: &Value) -> Value {
        let key = &self.0[0];
        let cipher = XChaCha20Poly1305::new(&key.0.into());
        let nonce = XNonce::generate();
        let plain = serde_json::to_vec(value).expect("a JSON value serializes");
        let data = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: step_key.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any message that fits in memory");
        json!({
            MARKER: SEALED,
            "v": 1,
            "key": key.id(),
            "nonce": BASE64.encode(nonce),
            "data": BASE64.encode(data),
        })
    }

    fn open(&self, step_key: &str, envelope: &Map<String, Value>) -> Result<Value, String> {
        let field = |name: &str| envelope.get(name).and_then(Value::as_str);
        let key_id = field("key").unwrap_or("?");
        let key = self.0.iter().find(|k| k.id() == key_id).ok_or_else(|| {
            format!(
                "it was sealed with step key {key_id}, which this process does not have (it has {}); \
                 restore that key to the launcher's step keys (after the new one), then retry the run",
                self.0.iter().map(Key::id).collect::<Vec<_>>().join(", ")
            )
        })?;
        let nonce = field("nonce").and_then(|n| BASE64.decode(n).ok());
        let data = field("data").and_then(|d| BASE64.decode(d).ok());
        let (Some(nonce), Some(data)) = (nonce, data) else {
            return Err("its sealed envelope is malformed".into());
        };
        let nonce = XNonce::try_from(nonce.as_slice()).map_err(|_| "its nonce is not 24 bytes")?;
        let plain = XChaCha20Poly1305::new(&key.0.into())
            .decrypt(
                &nonce,
                Payload {
                    msg: &data,
                    aad: step_key.as_bytes(),
                },
            )
            .map_err(|_| "it does not decrypt: the value was altered or moved from another step")?;
        serde_json::from_slice(&plain).map_err(|e| format!("its decrypted value is not JSON: {e}"))
    }
}

/// A plain value as a checkpoint stores it (escaped when it could be taken for Cairn's form).
pub fn plain(value: Value) -> Value {
    match &value {
        Value::Object(map) if map.contains_key(MARKER) => {
            json!({ MARKER: ESCAPED, "value": value })
        }
        _ => value,
    }
}

/// Whether a stored checkpoint is a sealed value.
pub fn is_sealed(stored: &Value) -> bool {
    stored.get(MARKER).and_then(Value::as_str) == Some(SEALED)
}

/// The value a checkpoint stands for, as a replay returns it: opened with `keys` when it was
/// sealed. The error says why it cannot be read (no key, a missing key, tampering).
pub fn value_of(step_key: &str, stored: Value, keys: Option<&StepKeys>) -> Result<Value, String> {
    let Value::Object(mut map) = stored else {
        return Ok(stored);
    };
    match map.get(MARKER).and_then(Value::as_str) {
        Some(SEALED) => {
            let keys = keys.ok_or_else(|| {
                "it is sealed (a sensitive step) and this process has no step keys (CAIRN_STEP_KEYS): \
                 launch it with `cairn dev` or the operator, which give them"
                    .to_string()
            })?;
            keys.open(step_key, &map)
        }
        Some(ESCAPED) => Ok(map.remove("value").unwrap_or(Value::Null)),
        _ => Ok(Value::Object(map)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_for_its_step_and_with_its_key() {
        let master = StepKeys::generate();
        let keys = master.for_namespace("team-a");
        let value = json!({"api_key": "sk-live-123", "n": 7});
        let sealed = keys.seal("credentials", &value);
        assert!(is_sealed(&sealed));
        assert!(!sealed.to_string().contains("sk-live-123"));
        assert_eq!(
            value_of("credentials", sealed.clone(), Some(&keys)).unwrap(),
            value
        );
        let moved = value_of("other", sealed.clone(), Some(&keys)).unwrap_err();
        assert!(moved.contains("does not decrypt"), "{moved}");
        let other_namespace = master.for_namespace("team-b");
        let wrong = value_of("credentials", sealed.clone(), Some(&other_namespace)).unwrap_err();
        assert!(wrong.contains(&keys.sealing_key_id()), "{wrong}");
        let none = value_of("credentials", sealed, None).unwrap_err();
        assert!(none.contains("CAIRN_STEP_KEYS"), "{none}");
    }

    #[test]
    fn a_rotated_list_seals_with_the_new_key_and_opens_with_the_old() {
        let old = StepKeys::generate();
        let new = StepKeys::generate();
        let sealed_before = old.seal("s", &json!(1));
        let rotated = StepKeys::parse(&format!("{}\n{}", new.encode(), old.encode())).unwrap();
        assert_eq!(
            value_of("s", sealed_before, Some(&rotated)).unwrap(),
            json!(1)
        );
        assert_eq!(rotated.sealing_key_id(), new.sealing_key_id());
        assert_eq!(
            rotated.for_namespace("x").sealing_key_id(),
            new.for_namespace("x").sealing_key_id()
        );
    }

    #[test]
    fn plain_values_that_look_like_cairns_forms_are_escaped() {
        let tricky = json!({"$cairn": "sealed", "key": "x"});
        let stored = plain(tricky.clone());
        assert!(!is_sealed(&stored));
        assert_eq!(value_of("s", stored, None).unwrap(), tricky);
        for value in [json!(null), json!([1]), json!("text"), json!({"a": 1})] {
            assert_eq!(plain(value.clone()), value);
        }
    }

    #[test]
    fn bad_key_lists_say_what_is_wrong_without_showing_a_key() {
        assert!(StepKeys::parse("").unwrap_err().contains("empty"));
        assert!(
            StepKeys::parse("not base64!")
                .unwrap_err()
                .contains("base64")
        );
        let short = StepKeys::parse("c2hvcnQ=").unwrap_err();
        assert!(short.contains("5 bytes"), "{short}");
        let keys = StepKeys::generate();
        assert!(!format!("{keys:?}").contains(&keys.encode()));
    }
}
