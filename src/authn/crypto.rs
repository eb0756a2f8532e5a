//! Signature checks, with RSA and ECDSA public keys parsed once, when a key set loads.
//!
//! jsonwebtoken's aws-lc verifier rebuilds the public key for every signature it
//! checks. For RSA that means a new key object and new Montgomery constants each
//! time: about 4 µs of a check that misses the caches, measured with perf on the
//! bench machine. [`Parsed`] holds aws-lc's `ParsedPublicKey` for each RSA or ECDSA
//! algorithm a key may verify, made with the same aws-lc parameters (and so the same
//! RSA key-size limits) jsonwebtoken uses. [`verify`] checks with it, and otherwise
//! calls `jsonwebtoken::crypto::verify` (other algorithms, keys of another family,
//! keys aws-lc will not parse), so those get jsonwebtoken's usual answers.

use aws_lc_rs::signature::{self as aws, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};

/// A key's parsed forms, one per RSA/ECDSA algorithm it may verify.
pub struct Parsed(Vec<(Algorithm, ParsedPublicKey)>);

impl Parsed {
    /// Parses `key` for each of `algorithms` this module checks itself.
    pub fn new(key: &DecodingKey, algorithms: &[Algorithm]) -> Parsed {
        Parsed(
            algorithms
                .iter()
                .filter_map(|&alg| Some((alg, parse(alg, key)?)))
                .collect(),
        )
    }

    fn get(&self, algorithm: Algorithm) -> Option<&ParsedPublicKey> {
        self.0.iter().find(|(a, _)| *a == algorithm).map(|(_, p)| p)
    }
}

/// Checks `signature` (the token's third part, base64url) over `message` (its first
/// two parts) with `key`, using its parsed form when there is one for `algorithm`.
pub fn verify(
    signature: &str,
    message: &[u8],
    key: &DecodingKey,
    parsed: &Parsed,
    algorithm: Algorithm,
) -> Result<bool> {
    match parsed.get(algorithm) {
        Some(public) => {
            let signature = URL_SAFE_NO_PAD
                .decode(signature)
                .map_err(ErrorKind::Base64)?;
            Ok(public.verify_sig(message, &signature).is_ok())
        }
        None => jsonwebtoken::crypto::verify(signature, message, key, algorithm),
    }
}

/// What jsonwebtoken's aws-lc verifier would check the signature with, parsed; `None`
/// for other algorithms and for a key of another family (an HMAC secret, say).
fn parse(algorithm: Algorithm, key: &DecodingKey) -> Option<ParsedPublicKey> {
    let family = key.family();
    match (rsa_parameters(algorithm), algorithm) {
        (Some(params), _) if family == AlgorithmFamily::Rsa => match key.kind() {
            DecodingKeyKind::SecretOrDer(der) => ParsedPublicKey::new(params, der).ok(),
            DecodingKeyKind::RsaModulusExponent { n, e } => RsaPublicKeyComponents { n, e }
                .to_parsed_public_key(params)
                .ok(),
        },
        (None, Algorithm::ES256) if family == AlgorithmFamily::Ec => {
            ParsedPublicKey::new(&aws::ECDSA_P256_SHA256_FIXED, key.try_get_as_bytes().ok()?).ok()
        }
        (None, Algorithm::ES384) if family == AlgorithmFamily::Ec => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::{KeyPair as RsaPair, KeySize};
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _};
    use jsonwebtoken::crypto::aws_lc;
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

    /// As the key store does it: parsed when the key loads, then checked.
    fn check(sig: &str, message: &[u8], key: &DecodingKey, alg: Algorithm) -> Result<bool> {
        verify(sig, message, key, &Parsed::new(key, &[alg]), alg)
    }

    fn is_parsed(alg: Algorithm, key: &DecodingKey) -> bool {
        Parsed::new(key, &[alg]).get(alg).is_some()
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
                    let ours = check(sig, msg, public, alg).ok();
                    assert_eq!(ours, reference(sig, msg, public, alg), "{alg:?}");
                }
            }
            for public in &keys.public {
                assert_eq!(
                    check(&good, message, public, alg).ok(),
                    Some(true),
                    "{alg:?}"
                );
                assert_eq!(
                    check(&good, &tampered, public, alg).ok(),
                    Some(false),
                    "{alg:?}"
                );
                assert!(is_parsed(alg, public), "{alg:?}: checked by the parsed key");
            }
            assert!(check("not base64!", message, &keys.public[0], alg).is_err());
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
            check(&hs, b"a.b", &secret, Algorithm::HS256).ok(),
            Some(true)
        );
        assert_eq!(
            check(&hs, b"a.c", &secret, Algorithm::HS256).ok(),
            Some(false)
        );
        assert!(parse(Algorithm::HS256, &secret).is_none());
        // An RSA algorithm with an HMAC secret (key confusion) is refused, as before.
        let rsa = rsa_keys();
        let rs = sign(Algorithm::RS256, &rsa.signing, b"a.b");
        // Answered as jsonwebtoken answers it, and never as a valid signature.
        let refused_as_jsonwebtoken_does = |key: &DecodingKey| {
            let ours = check(&rs, b"a.b", key, Algorithm::RS256).ok();
            assert_eq!(ours, reference(&rs, b"a.b", key, Algorithm::RS256));
            assert_ne!(ours, Some(true));
        };
        assert!(parse(Algorithm::RS256, &secret).is_none());
        refused_as_jsonwebtoken_does(&secret);
        // Nor does a secret with the very bytes of an RSA key that is parsed.
        let der = &rsa.public[1];
        assert_eq!(check(&rs, b"a.b", der, Algorithm::RS256).ok(), Some(true));
        assert!(is_parsed(Algorithm::RS256, der));
        let DecodingKeyKind::SecretOrDer(bytes) = der.kind() else {
            panic!("DER")
        };
        refused_as_jsonwebtoken_does(&DecodingKey::from_secret(bytes));
    }

    /// Key confusion the other way: an HMAC secret whose bytes are an EC public point
    /// is never taken for that EC key, for ES256 or ES384.
    #[test]
    fn a_secret_with_the_bytes_of_an_ec_key_is_not_that_key() {
        for (alg, signing) in [
            (Algorithm::ES256, &aws::ECDSA_P256_SHA256_FIXED_SIGNING),
            (Algorithm::ES384, &aws::ECDSA_P384_SHA384_FIXED_SIGNING),
        ] {
            let keys = ec(signing);
            let good = sign(alg, &keys.signing, b"a.b");
            let point = keys.public[0].try_get_as_bytes().unwrap().to_vec();
            let secret = DecodingKey::from_secret(&point);
            assert!(!is_parsed(alg, &secret), "{alg:?}");
            let ours = check(&good, b"a.b", &secret, alg).ok();
            assert_eq!(ours, reference(&good, b"a.b", &secret, alg), "{alg:?}");
            assert_ne!(ours, Some(true), "{alg:?}");
        }
    }
}
