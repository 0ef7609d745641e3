//! The agent install command `stella agent token create --install` prints.
//!
//! Over `https://` with the server's own TLS key (`api_key_pin` of `GET
//! /api/v1/gateway`), curl is told `-k --pinnedpubkey`: no CA and no host name is
//! checked, but the connection fails unless the server proves it holds the pinned key,
//! which works on a host that has never seen the server's CA, under any name or address
//! it reaches the server by. The script pins the same key for the agent binary, and
//! checks its SHA-256 before installing it. Over plain `http://` (a dev server on
//! loopback) only that SHA-256 check protects, and only against damage, not against an
//! attacker on the network.

use anyhow::bail;

/// The server URL the new host is to use, without a trailing `/`.
pub fn server_url(url: &str) -> anyhow::Result<String> {
    let url = url.trim().trim_end_matches('/');
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("install server `{url}` is not an http(s) URL");
    };
    let host_ok = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'));
    if !matches!(scheme, "http" | "https") || !host_ok {
        bail!("install server `{url}` is not an http(s) URL of a host and port (no path)");
    }
    Ok(url.to_owned())
}

/// The one line to paste on a new host.
pub fn command(server: &str, token: &str, pin: Option<&str>) -> String {
    let script = format!("{server}/install/agent.sh");
    let mut args = format!("--server {} --token {}", quote(server), quote(token));
    let fetch = match pin.filter(|_| server.starts_with("https://")) {
        Some(pin) => {
            args.push_str(&format!(" --pin {}", quote(pin)));
            format!(
                "curl -fsSk --pinnedpubkey {} {}",
                quote(pin),
                quote(&script)
            )
        }
        None => format!("curl -fsS {}", quote(&script)),
    };
    format!("{fetch} | sudo sh -s -- {args}")
}

/// What the operator is told on stderr about the command.
pub fn note(server: &str, pinned: bool, expires_at: &str) -> String {
    let trust = if server.starts_with("http://") {
        "plain HTTP: only the SHA-256 check of the agent binary protects the install, against damage but not against an attacker on the network"
    } else if pinned {
        "the server's TLS key is pinned in the command"
    } else {
        "the server's certificate is checked against the host's CA roots"
    };
    let mut note = format!(
        "run the command above as a user who may sudo on the new host; the join token in it is single-use and expires {expires_at}; {trust}"
    );
    if is_loopback(server) {
        note.push_str(&format!(
            "\nnote: {server} is this machine's loopback address; give --install-server with an address the new host reaches"
        ));
    }
    note
}

fn is_loopback(server: &str) -> bool {
    let authority = server.split_once("://").map_or(server, |(_, rest)| rest);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `text` as one shell word.
fn quote(text: &str) -> String {
    if text.chars().all(|c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/' | '=' | '+' | '@')
    }) {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_the_key_over_https_only() {
        let pinned = command("https://cp:8080", "stj1.x", Some("sha256//AB+c/d="));
        assert_eq!(
            pinned,
            "curl -fsSk --pinnedpubkey sha256//AB+c/d= https://cp:8080/install/agent.sh | sudo sh -s -- --server https://cp:8080 --token stj1.x --pin sha256//AB+c/d="
        );
        let plain = command("http://127.0.0.1:8080", "stj1.x", Some("sha256//x"));
        assert!(!plain.contains("-k"), "{plain}");
        assert!(!plain.contains("--pin"), "{plain}");
    }

    #[test]
    fn refuses_urls_with_paths_or_other_schemes() {
        assert_eq!(
            server_url("https://cp:8080/").ok().as_deref(),
            Some("https://cp:8080")
        );
        assert!(server_url("ftp://cp").is_err());
        assert!(server_url("https://cp/x;rm").is_err());
        assert!(server_url("cp:8080").is_err());
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert!(is_loopback("http://127.0.0.1:8080"));
        assert!(is_loopback("https://[::1]:8080"));
        assert!(!is_loopback("https://10.0.0.5:8080"));
    }
}
