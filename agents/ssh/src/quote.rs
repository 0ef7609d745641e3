//! Quoting for the remote user's POSIX shell: every argument of a remote command goes
//! through [`shell_quote`].

/// `value` as one word of a POSIX shell command line: unchanged when it holds only
/// characters no shell treats specially, else in single quotes with each `'` written as
/// `'\''`.
pub fn shell_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'/' | b':' | b'@' | b'=' | b',' | b'+' | b'%'
                )
        });
    if plain {
        return value.to_owned();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

/// The words quoted and joined with spaces: a command line.
pub fn shell_join<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|word| shell_quote(word.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_and_everything_else_is_single_quoted() {
        assert_eq!(shell_quote("docker"), "docker");
        assert_eq!(
            shell_quote("127.0.0.1:5000/web@sha256:ab"),
            "127.0.0.1:5000/web@sha256:ab"
        );
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(shell_quote("`x`;y|z&"), "'`x`;y|z&'");
        assert_eq!(shell_quote("line\nbreak"), "'line\nbreak'");
        assert_eq!(shell_join(&["echo", "a b", "c"]), "echo 'a b' c");
    }

    #[test]
    fn the_shell_reads_back_exactly_the_value() {
        for value in [
            "plain",
            "with space",
            "it's",
            "''",
            "$HOME ${X} `id` $(id)",
            "back\\slash",
            "new\nline",
            "tab\tand \"double\"",
            "*?[]{}~#!",
            "",
        ] {
            let output = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(value)))
                .output()
                .expect("sh");
            assert_eq!(String::from_utf8_lossy(&output.stdout), value, "{value:?}");
        }
    }
}
