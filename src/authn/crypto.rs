//! jsonwebtoken's aws-lc crypto, with public keys parsed once instead of per token.
//!
//! jsonwebtoken's aws-lc provider rebuilds the public key for every signature it
//! checks. For RSA that means a new key object and new Montgomery constants each
//! time: about 4 µs of a check that misses the caches, measured with perf on the
//! bench machine. [`verify`] is jsonwebtoken's `crypto::verify` with one change:
//! RSA and ECDSA signatures, with a key of the algorithm's own family, are checked
//! with an aws-lc `ParsedPublicKey` made once per key and kept, with the same aws-lc
//! parameters (and so the same RSA key-size limits) jsonwebtoken uses. Every other
//! algorithm, key of another family, and key aws-lc will not parse goes to
//! jsonwebtoken's own aws-lc verifiers, which give their usual answers.
//!
//! It is a function rather than an installed `CryptoProvider`: the process-wide
//! default is fixed by whichever jsonwebtoken call comes first, and the tests (which
//! sign tokens before they start a server) would then run the other path.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use aws_lc_rs::signature::{self as aws, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::crypto::{aws_lc, JwtVerifier};
use jsonwebtoken::errors::Result;
use jsonwebtoken::signature::{Error, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};

/// Checks `signature` (the token's third part, base64url) over `message` (its first
/// two parts): jsonwebtoken's `crypto::verify`, with this module's verifiers.
pub fn verify(
    signature: &str,
    message: &[u8],
    key: &DecodingKey,
    algorithm: Algorithm,
) -> Result<bool> {
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(jsonwebtoken::errors::ErrorKind::Base64)?;
    let verifier = new_verifier(&algorithm, key)?;
    Ok(verifier.verify(message, &signature).is_ok())
}

/// Parsed keys are few (the configured issuers' keys), but key rotation adds new
/// ones over the life of the process: past this many the table starts over.
const MAX_KEYS: usize = 256;

/// A key's identity: the algorithm and the key material itself. Only keys of the
/// algorithm's own family get one (see [`handles`]), so the family is implied.
type KeyId = (Algorithm, Vec<u8>);

/// Parsed public keys by identity.
#[derive(Default)]
struct KeyTable(RwLock<HashMap<KeyId, Arc<ParsedPublicKey>>>);

static PARSED: LazyLock<KeyTable> = LazyLock::new(KeyTable::default);

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    match PARSED.get_or_parse(*algorithm, key) {
        Some(key) => Ok(Box::new(ParsedVerifier {
            algorithm: *algorithm,
            key,
        })),
        // Other algorithms, keys of the wrong family and keys aws-lc rejects all go
        // to the default provider, which gives its usual answer for them.
        None => (aws_lc::DEFAULT_PROVIDER.verifier_factory)(algorithm, key),
    }
}

impl KeyTable {
    /// The parsed form of `key` for `algorithm`, made on first use; `None` when this
    /// module does not handle the pair.
    fn get_or_parse(
        &self,
        algorithm: Algorithm,
        key: &DecodingKey,
    ) -> Option<Arc<ParsedPublicKey>> {
        // Before the lookup: a key of another family (an HMAC secret, say) must never
        // find an entry, even one with the same bytes.
        if !handles(algorithm, key.family()) {
            return None;
        }
        let id = key_id(algorithm, key);
        if let Some(found) = self.read().get(&id) {
            return Some(found.clone());
        }
        let made = Arc::new(parse(algorithm, key)?);
        let mut table = self.0.write().unwrap_or_else(|e| e.into_inner());
        if table.len() >= MAX_KEYS {
            table.clear();
        }
        table.insert(id, made.clone());
        Some(made)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<KeyId, Arc<ParsedPublicKey>>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn key_id(algorithm: Algorithm, key: &DecodingKey) -> KeyId {
    let bytes = match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => [b"D", &der[..]].concat(),
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            // Length-prefixed, so no modulus/exponent split reads as another.
            [b"C", &(n.len() as u64).to_be_bytes()[..], n, e].concat()
        }
    };
    (algorithm, bytes)
}

/// The algorithms this module checks, each with the one key family it accepts.
fn handles(algorithm: Algorithm, family: AlgorithmFamily) -> bool {
    match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => family == AlgorithmFamily::Ec,
        _ => rsa_parameters(algorithm).is_some() && family == AlgorithmFamily::Rsa,
    }
}

/// What jsonwebtoken's aws-lc verifier would check the signature with, parsed.
fn parse(algorithm: Algorithm, key: &DecodingKey) -> Option<ParsedPublicKey> {
    if !handles(algorithm, key.family()) {
        return None;
    }
    match (rsa_parameters(algorithm), algorithm) {
        (Some(params), _) => match key.kind() {
            DecodingKeyKind::SecretOrDer(der) => ParsedPublicKey::new(params, der).ok(),
            DecodingKeyKind::RsaModulusExponent { n, e } => RsaPublicKeyComponents { n, e }
                .to_parsed_public_key(params)
                .ok(),
        },
        (None, Algorithm::ES256) => {
            ParsedPublicKey::new(&aws::ECDSA_P256_SHA256_FIXED, key.try_get_as_bytes().ok()?).ok()
        }
        (None, Algorithm::ES384) => {
            ParsedPublicKey::new(&aws::ECDSA_P384_SHA384_FIXED, key.try_get_as_bytes().ok()?).ok()
        }
        _ => None,
    }
}

/// The same parameters jsonwebtoken's aws-lc verifiers use.
fn rsa_parameters(algorithm: Algorithm) -> Option<&'static RsaParameters> {
    Some(match algorithm {
        Algorithm::RS256 => &aws::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &aws::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &aws::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &aws::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &aws::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &aws::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

struct ParsedVerifier {
    algorithm: Algorithm,
    key: Arc<ParsedPublicKey>,
}

impl Verifier<Vec<u8>> for ParsedVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> std::result::Result<(), Error> {
        self.key
            .verify_sig(message, signature)
            .map_err(Error::from_source)
    }
}

impl JwtVerifier for ParsedVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::{KeyPair as RsaPair, KeySize};
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _};
    use jsonwebtoken::EncodingKey;

    /// A signing key, and the public key in the forms a JWKS or PEM gives it.
    struct Keys {
        signing: EncodingKey,
        public: Vec<DecodingKey>,
    }

    fn rsa_keys() -> Keys {
        let pair = RsaPair::generate(KeySize::Rsa2048).unwrap();
        let pkcs8 = AsDer::<Pkcs8V1Der>::as_der(&pair).unwrap();
        let public = pair.public_key();
        let n = public.modulus().big_endian_without_leading_zero().to_vec();
        let e = public.exponent().big_endian_without_leading_zero().to_vec();
        Keys {
            signing: EncodingKey::from_rsa_pem(pem(pkcs8.as_ref()).as_bytes()).unwrap(),
            public: vec![
                DecodingKey::from_rsa_raw_components(&n, &e),
                DecodingKey::from_rsa_der(public.as_ref()),
            ],
        }
    }

    fn pem(pkcs8: &[u8]) -> String {
        use base64::engine::general_purpose::STANDARD;
        let b64: String = STANDARD
            .encode(pkcs8)
            .as_bytes()
            .chunks(64)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        format!("-----BEGIN PRIVATE KEY-----\n{b64}-----END PRIVATE KEY-----\n")
    }

    fn ec(alg: &'static aws::EcdsaSigningAlgorithm) -> Keys {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new()).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).unwrap();
        Keys {
            signing: EncodingKey::from_ec_der(pkcs8.as_ref()),
            public: vec![DecodingKey::from_ec_der(pair.public_key().as_ref())],
        }
    }

    fn sign(alg: Algorithm, key: &EncodingKey, message: &[u8]) -> String {
        let signer = (aws_lc::DEFAULT_PROVIDER.signer_factory)(&alg, key).unwrap();
        URL_SAFE_NO_PAD.encode(signer.try_sign(message).unwrap())
    }

    /// jsonwebtoken's `crypto::verify` with its own aws-lc provider, the reference.
    fn reference(sig: &str, message: &[u8], key: &DecodingKey, alg: Algorithm) -> Option<bool> {
        let signature = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let verifier = (aws_lc::DEFAULT_PROVIDER.verifier_factory)(&alg, key).ok()?;
        Some(verifier.verify(message, &signature).is_ok())
    }

    fn is_parsed(alg: Algorithm, key: &DecodingKey) -> bool {
        PARSED.read().contains_key(&key_id(alg, key))
    }

    #[test]
    fn answers_as_jsonwebtoken_does_for_good_and_bad_signatures() {
        let rsa = rsa_keys();
        let other_rsa = rsa_keys();
        let p256 = ec(&aws::ECDSA_P256_SHA256_FIXED_SIGNING);
        let p384 = ec(&aws::ECDSA_P384_SHA384_FIXED_SIGNING);
        let cases = [
            (Algorithm::RS256, &rsa, &other_rsa),
            (Algorithm::RS384, &rsa, &other_rsa),
            (Algorithm::RS512, &rsa, &other_rsa),
            (Algorithm::PS256, &rsa, &other_rsa),
            (Algorithm::PS384, &rsa, &other_rsa),
            (Algorithm::PS512, &rsa, &other_rsa),
            (Algorithm::ES256, &p256, &rsa),
            (Algorithm::ES384, &p384, &p256),
        ];
        let message = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0";
        for (alg, keys, wrong) in cases {
            let good = sign(alg, &keys.signing, message);
            let mut tampered = message.to_vec();
            tampered[5] ^= 1;
            for public in keys.public.iter().chain(&wrong.public) {
                for (sig, msg) in [
                    (good.as_str(), &message[..]),
                    (good.as_str(), &tampered[..]),
                ] {
                    let ours = verify(sig, msg, public, alg).ok();
                    assert_eq!(ours, reference(sig, msg, public, alg), "{alg:?}");
                }
            }
            for public in &keys.public {
                assert_eq!(
                    verify(&good, message, public, alg).ok(),
                    Some(true),
                    "{alg:?}"
                );
                assert_eq!(
                    verify(&good, &tampered, public, alg).ok(),
                    Some(false),
                    "{alg:?}"
                );
                assert!(is_parsed(alg, public), "{alg:?}: parsed once and kept");
            }
            assert!(verify("not base64!", message, &keys.public[0], alg).is_err());
        }
    }

    #[test]
    fn other_algorithms_go_to_jsonwebtoken_unchanged() {
        let secret = DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let hs = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            b"a.b",
        );
        assert_eq!(
            verify(&hs, b"a.b", &secret, Algorithm::HS256).ok(),
            Some(true)
        );
        assert_eq!(
            verify(&hs, b"a.c", &secret, Algorithm::HS256).ok(),
            Some(false)
        );
        assert!(parse(Algorithm::HS256, &secret).is_none());
        // An RSA algorithm with an HMAC secret (key confusion) is refused, as before.
        let rsa = rsa_keys();
        let rs = sign(Algorithm::RS256, &rsa.signing, b"a.b");
        assert!(parse(Algorithm::RS256, &secret).is_none());
        assert_eq!(
            verify(&rs, b"a.b", &secret, Algorithm::RS256).ok(),
            reference(&rs, b"a.b", &secret, Algorithm::RS256)
        );
        assert_ne!(
            verify(&rs, b"a.b", &secret, Algorithm::RS256).ok(),
            Some(true)
        );
        // Nor does a secret with the very bytes of an RSA key already parsed and kept.
        let der = &rsa.public[1];
        assert_eq!(verify(&rs, b"a.b", der, Algorithm::RS256).ok(), Some(true));
        assert!(is_parsed(Algorithm::RS256, der));
        let DecodingKeyKind::SecretOrDer(bytes) = der.kind() else {
            panic!("DER")
        };
        let same_bytes = DecodingKey::from_secret(bytes);
        assert_eq!(
            verify(&rs, b"a.b", &same_bytes, Algorithm::RS256).ok(),
            reference(&rs, b"a.b", &same_bytes, Algorithm::RS256)
        );
        assert_ne!(
            verify(&rs, b"a.b", &same_bytes, Algorithm::RS256).ok(),
            Some(true)
        );
    }

    #[test]
    fn the_table_of_parsed_keys_stays_bounded() {
        let key = rsa_keys();
        let DecodingKeyKind::RsaModulusExponent { n, .. } = key.public[0].kind() else {
            panic!("components")
        };
        let table = KeyTable::default();
        // The same modulus with many exponents: distinct keys to aws-lc.
        for e in 0..(MAX_KEYS as u32 + 10) {
            let e = (65537 + 2 * e).to_be_bytes();
            let key = DecodingKey::from_rsa_raw_components(n, &e[1..]);
            assert!(table.get_or_parse(Algorithm::RS256, &key).is_some());
            assert!(table.read().len() <= MAX_KEYS);
        }
        assert!(table.read().len() >= 10);
    }
}
