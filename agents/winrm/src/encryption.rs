//! WS-Management message encryption over plain HTTP (MS-WSMV 2.2.9.1.1): after an NTLM
//! handshake that negotiated key exchange, signing and sealing, every envelope travels
//! sealed (RC4) and signed (HMAC-MD5) with the session's keys (MS-NLMP 3.4.4 with
//! extended session security, 3.4.5 key derivation), inside a
//! `multipart/encrypted; protocol="application/HTTP-SPNEGO-session-encrypted"` body.
//!
//! `ntlmclient` builds the messages and the NTLMv2 response (and its session base key);
//! it has no session security, so the key exchange, key derivation, sealing and
//! signing are here, with RustCrypto's `md-5`, `hmac` and `rc4`.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use rc4::consts::U16;
use rc4::{KeyInit, Rc4, StreamCipher};

/// The `Content-Type` of an encrypted body.
pub const CONTENT_TYPE: &str = "multipart/encrypted;protocol=\"application/HTTP-SPNEGO-session-encrypted\";boundary=\"Encrypted Boundary\"";

const BOUNDARY: &[u8] = b"--Encrypted Boundary";

/// The keys and cipher states of one authenticated NTLM session, client side.
pub(crate) struct Session {
    seal_out: Rc4<U16>,
    sign_out: [u8; 16],
    seq_out: u32,
    seal_in: Rc4<U16>,
    sign_in: [u8; 16],
    seq_in: u32,
}

// By hand so no key reaches a log line.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("seq_out", &self.seq_out)
            .field("seq_in", &self.seq_in)
            .finish_non_exhaustive()
    }
}

fn md5_of(key: &[u8; 16], magic: &[u8]) -> [u8; 16] {
    let mut hash = Md5::new();
    hash.update(key);
    hash.update(magic);
    hash.finalize().into()
}

/// `RC4(key, data)`, the key exchange's encryption of the exported session key.
pub(crate) fn rc4_once(key: &[u8; 16], data: &[u8; 16]) -> [u8; 16] {
    let mut out = *data;
    Rc4::<U16>::new(key.into()).apply_keystream(&mut out);
    out
}

impl Session {
    /// The client's session from the exported session key (MS-NLMP 3.4.5.2, 3.4.5.3,
    /// 128-bit).
    pub(crate) fn client(exported_session_key: &[u8; 16]) -> Session {
        let key = |magic: &[u8]| md5_of(exported_session_key, magic);
        let seal_out = key(b"session key to client-to-server sealing key magic constant\0");
        let seal_in = key(b"session key to server-to-client sealing key magic constant\0");
        Session {
            seal_out: Rc4::<U16>::new((&seal_out).into()),
            sign_out: key(b"session key to client-to-server signing key magic constant\0"),
            seq_out: 0,
            seal_in: Rc4::<U16>::new((&seal_in).into()),
            sign_in: key(b"session key to server-to-client signing key magic constant\0"),
            seq_in: 0,
        }
    }

    /// Seals `message`; returns the 16-byte signature and the sealed bytes.
    fn wrap(&mut self, message: &[u8]) -> ([u8; 16], Vec<u8>) {
        let mut sealed = message.to_vec();
        self.seal_out.apply_keystream(&mut sealed);
        let signature = signature(&mut self.seal_out, &self.sign_out, self.seq_out, message);
        self.seq_out = self.seq_out.wrapping_add(1);
        (signature, sealed)
    }

    /// Unseals `sealed` and checks its signature.
    fn unwrap(&mut self, signature_bytes: &[u8], sealed: &[u8]) -> Result<Vec<u8>, String> {
        let mut message = sealed.to_vec();
        self.seal_in.apply_keystream(&mut message);
        let expected = signature(&mut self.seal_in, &self.sign_in, self.seq_in, &message);
        self.seq_in = self.seq_in.wrapping_add(1);
        if expected.as_slice() != signature_bytes {
            return Err("the answer's signature does not verify".to_owned());
        }
        Ok(message)
    }

    /// The encrypted body for `envelope`.
    pub(crate) fn encrypt(&mut self, envelope: &[u8]) -> Vec<u8> {
        let (signature, sealed) = self.wrap(envelope);
        let mut body = Vec::with_capacity(sealed.len() + 256);
        body.extend_from_slice(BOUNDARY);
        body.extend_from_slice(
            b"\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n",
        );
        body.extend_from_slice(
            format!(
                "\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length={}\r\n",
                envelope.len()
            )
            .as_bytes(),
        );
        body.extend_from_slice(BOUNDARY);
        body.extend_from_slice(b"\r\n\tContent-Type: application/octet-stream\r\n");
        body.extend_from_slice(&16u32.to_le_bytes());
        body.extend_from_slice(&signature);
        body.extend_from_slice(&sealed);
        body.extend_from_slice(BOUNDARY);
        body.extend_from_slice(b"--\r\n");
        body
    }

    /// The envelope in an encrypted answer.
    pub(crate) fn decrypt(&mut self, body: &[u8]) -> Result<Vec<u8>, String> {
        let after_header = find(body, b"Length=")
            .map(|at| &body[at + 7..])
            .ok_or("no OriginalContent length in the encrypted answer")?;
        let end = find(after_header, b"\r\n").ok_or("a truncated encrypted answer")?;
        let length: usize = std::str::from_utf8(&after_header[..end])
            .ok()
            .and_then(|l| l.trim().parse().ok())
            .ok_or("the OriginalContent length is not a number")?;
        let marker = b"Content-Type: application/octet-stream\r\n";
        let payload = find(after_header, marker)
            .map(|at| &after_header[at + marker.len()..])
            .ok_or("no octet-stream part in the encrypted answer")?;
        if payload.len() < 4 {
            return Err("a truncated encrypted answer".to_owned());
        }
        let signature_length =
            u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
        let rest = &payload[4..];
        if signature_length != 16 || rest.len() < 16 + length {
            return Err("a truncated encrypted answer".to_owned());
        }
        let message = self.unwrap(&rest[..16], &rest[16..16 + length])?;
        Ok(message)
    }
}

/// MS-NLMP 3.4.4.2 with extended session security and key exchange: version 1, the
/// first 8 bytes of HMAC-MD5(signing key, seq ‖ message) sealed with the same RC4
/// handle, the sequence number.
fn signature(handle: &mut Rc4<U16>, sign_key: &[u8; 16], seq: u32, message: &[u8]) -> [u8; 16] {
    let mut mac = <Hmac<Md5> as Mac>::new_from_slice(sign_key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(&seq.to_le_bytes());
    mac.update(message);
    let digest = mac.finalize().into_bytes();
    let mut checksum = [0u8; 8];
    checksum.copy_from_slice(&digest[..8]);
    handle.apply_keystream(&mut checksum);
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&1u32.to_le_bytes());
    out[4..12].copy_from_slice(&checksum);
    out[12..].copy_from_slice(&seq.to_le_bytes());
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's side, for a round trip: the client's keys swapped.
    fn server(exported_session_key: &[u8; 16]) -> Session {
        let mut session = Session::client(exported_session_key);
        std::mem::swap(&mut session.seal_in, &mut session.seal_out);
        std::mem::swap(&mut session.sign_in, &mut session.sign_out);
        session
    }

    #[test]
    fn a_sealed_envelope_opens_on_the_other_side_and_tampering_is_seen() {
        let key = [7u8; 16];
        let mut client = Session::client(&key);
        let mut host = server(&key);
        for envelope in [&b"<s:Envelope>one</s:Envelope>"[..], b"<two/>"] {
            let body = client.encrypt(envelope);
            assert!(
                find(&body, envelope).is_none(),
                "the envelope is in clear text"
            );
            assert_eq!(host.decrypt(&body).expect("opens"), envelope);
        }
        let mut body = host.encrypt(b"<answer/>");
        assert_eq!(client.decrypt(&body).expect("opens"), b"<answer/>");
        let mut body2 = host.encrypt(b"<answer/>");
        let last = body2.len() - 30;
        body2[last] ^= 1;
        assert!(client.decrypt(&body2).is_err());
        body.truncate(40);
        assert!(client.decrypt(&body).is_err());
    }

    #[test]
    fn keys_follow_ms_nlmp() {
        // MS-NLMP 4.2.4.1.3 test vector: with the random session key 55…55, the
        // client's signing key for NTLMv2 with extended session security.
        let session = Session::client(&[0x55; 16]);
        assert_eq!(
            session.sign_out,
            [
                0x47, 0x88, 0xdc, 0x86, 0x1b, 0x47, 0x82, 0xf3, 0x5d, 0x43, 0xfd, 0x98, 0xfe, 0x1a,
                0x2d, 0x39
            ]
        );
    }
}
