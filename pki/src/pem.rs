//! PEM helpers.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{PkiError, Result};

/// Decodes every `CERTIFICATE` block of a PEM text, in order; other blocks are skipped.
///
/// Fails when the text holds no certificate at all.
pub fn pem_to_der_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PkiError::Pem {
            what: "certificate",
            source,
        })?;
    if certs.is_empty() {
        return Err(PkiError::PemEmpty {
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Decodes the first private key (PKCS#8, SEC1 or PKCS#1) of a PEM text.
pub(crate) fn pem_to_private_key(pem: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => PkiError::PemEmpty {
            what: "private key",
        },
        source => PkiError::Pem {
            what: "private key",
            source,
        },
    })
}

/// Encodes DER as PEM with 64-character lines.
///
/// Written by hand because it is a few lines and the `pem` crate is not a workspace
/// dependency; the decoding side uses rustls-pki-types.
pub(crate) fn encode_pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // Base64 output is ASCII, so splitting the bytes keeps every chunk valid UTF-8.
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let pem = encode_pem("CERTIFICATE", &der);
        assert!(pem.lines().all(|l| l.len() <= 64));
        let certs = pem_to_der_certs(&pem).unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].as_ref(), der.as_slice());
    }

    #[test]
    fn empty_and_garbage_pem_fail() {
        assert!(matches!(
            pem_to_der_certs(""),
            Err(PkiError::PemEmpty { .. })
        ));
        assert!(
            pem_to_der_certs("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}
