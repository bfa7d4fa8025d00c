//! Signs Kinde-shaped events with a local RSA key, the way Kinde does: a compact RS256 JWT
//! whose header carries a colon-hex `kid`. Used by the `dev` server, `send`, and tests.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::DecodingKey;
use serde_json::{Value, json};

/// Why a key could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    /// Key generation failed in the crypto library.
    #[error("could not generate an RSA key")]
    Generate,
    /// The PEM text is not a PKCS#8 `PRIVATE KEY`.
    #[error("not a PKCS#8 PEM private key: {0}")]
    Pem(String),
    /// The key is not a usable RSA key (under 2048 bits, say).
    #[error("not a usable RSA private key: {0}")]
    Key(String),
}

/// An RSA-2048 private key with its `kid`. `Debug` shows the `kid` only.
pub struct SigningKey {
    pair: KeyPair,
    kid: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh RSA-2048 key; its `kid` is Kinde-style colon-hex, derived from the modulus.
    pub fn generate() -> Result<Self, SigningError> {
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| SigningError::Generate)?;
        Ok(Self::with_default_kid(pair))
    }

    /// Read a PKCS#8 PEM private key; `kid` defaults to the colon-hex fingerprint.
    pub fn from_pem(pem_text: &str, kid: Option<String>) -> Result<Self, SigningError> {
        let block = pem::parse(pem_text).map_err(|e| SigningError::Pem(e.to_string()))?;
        if block.tag() != "PRIVATE KEY" {
            let hint = if block.tag() == "RSA PRIVATE KEY" {
                " (a PKCS#1 key: convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY.pem -out KEY-pkcs8.pem`)"
            } else {
                ""
            };
            return Err(SigningError::Pem(format!(
                "found a {:?} block, expected PRIVATE KEY{hint}",
                block.tag()
            )));
        }
        let pair =
            KeyPair::from_pkcs8(block.contents()).map_err(|e| SigningError::Key(e.to_string()))?;
        let mut key = Self::with_default_kid(pair);
        if let Some(kid) = kid {
            key.kid = kid;
        }
        Ok(key)
    }

    fn with_default_kid(pair: KeyPair) -> Self {
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            pair.public_key()
                .modulus()
                .big_endian_without_leading_zero(),
        );
        let kid = digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        Self { pair, kid }
    }

    /// The same key under another `kid` (to test what a receiver does with it).
    pub fn with_kid(mut self, kid: String) -> Self {
        self.kid = kid;
        self
    }

    /// The key as PKCS#8 PEM, to keep it on disk.
    pub fn to_pem(&self) -> Result<String, SigningError> {
        let der = self.pair.as_der().map_err(|_| SigningError::Generate)?;
        Ok(pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            der.as_ref().to_vec(),
        )))
    }

    /// The `kid` this key signs with.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK, as Kinde publishes it.
    pub fn jwk(&self) -> Value {
        let public = self.pair.public_key();
        json!({
            "e": B64.encode(public.exponent().big_endian_without_leading_zero()),
            "n": B64.encode(public.modulus().big_endian_without_leading_zero()),
            "alg": "RS256",
            "kid": self.kid,
            "kty": "RSA",
            "use": "sig",
        })
    }

    /// A JWKS document holding this key alone.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk()] })
    }

    /// The public key for verification.
    pub fn decoding_key(&self) -> DecodingKey {
        let public = self.pair.public_key();
        DecodingKey::from_rsa_raw_components(
            public.modulus().big_endian_without_leading_zero(),
            public.exponent().big_endian_without_leading_zero(),
        )
    }

    /// Sign `claims` with Kinde's header: `{"alg":"RS256","typ":"JWT","kid":...}`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": "RS256", "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    /// Sign `claims` under any header (tests use this to craft hostile tokens).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(header).unwrap_or_default()),
            B64.encode(serde_json::to_vec(claims).unwrap_or_default())
        );
        let signature = self.sign_bytes(input.as_bytes());
        format!("{input}.{}", B64.encode(signature))
    }

    /// An RS256 (PKCS#1 v1.5, SHA-256) signature of `message`.
    pub fn sign_bytes(&self, message: &[u8]) -> Vec<u8> {
        let mut signature = vec![0; self.pair.public_modulus_len()];
        // Signing with a valid in-memory key fails only if the RNG fails.
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut signature,
            )
            .expect("RSA signing with a valid key");
        signature
    }
}

/// A fresh Kinde-style event id: `event_` + 32 hex.
pub fn new_event_id() -> String {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).expect("system RNG");
    format!(
        "event_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// A fresh `webhook-id` header value.
pub fn new_webhook_id() -> String {
    let mut bytes = [0u8; 12];
    SystemRandom::new().fill(&mut bytes).expect("system RNG");
    format!(
        "msg_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Complete a claims object the way Kinde sends it: `event_id`, `timestamp` (now, with
/// microseconds) and `source` are filled in when missing.
pub fn complete_claims(mut claims: Value) -> Value {
    if let Some(obj) = claims.as_object_mut() {
        obj.entry("event_id")
            .or_insert_with(|| new_event_id().into());
        obj.entry("timestamp").or_insert_with(|| {
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
                .into()
        });
        obj.entry("source").or_insert_with(|| "admin".into());
    }
    claims
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_kid_and_debug_hides_the_key() {
        let k = SigningKey::generate().unwrap();
        let pem = k.to_pem().unwrap();
        let back = SigningKey::from_pem(&pem, None).unwrap();
        assert_eq!(back.kid(), k.kid());
        assert_eq!(k.kid().split(':').count(), 16);
        assert!(!format!("{k:?}").contains("PRIVATE"));
        assert!(SigningKey::from_pem("nope", None).is_err());
    }

    #[test]
    fn completes_missing_claims_only() {
        let c = complete_claims(json!({"type": "user.created", "event_id": "event_x"}));
        assert_eq!(c["event_id"], "event_x");
        assert!(c["timestamp"].as_str().unwrap().contains('T'));
        assert!(new_event_id().len() == 38);
    }
}
