//! Settings accepted and refused, per kind.

use super::*;

#[test]
fn settings_are_checked_per_kind() {
    let mut settings = BTreeMap::new();
    settings.insert(
        "ports".to_owned(),
        "8080:80,127.0.0.1:9090:90/udp".to_owned(),
    );
    settings.insert("env.MODE".to_owned(), "prod".to_owned());
    assert!(TargetKind::Docker.validate_settings(&settings).is_ok());
    assert!(TargetKind::Compose.validate_settings(&settings).is_err());
    settings.insert("colour".to_owned(), "blue".to_owned());
    assert!(TargetKind::Docker.validate_settings(&settings).is_err());
    let bad_ports = BTreeMap::from([("ports".to_owned(), "80:http".to_owned())]);
    assert!(TargetKind::Docker.validate_settings(&bad_ports).is_err());
    assert!("kubernetes".parse::<TargetKind>().is_err());
}

#[test]
fn setting_errors_name_the_setting() {
    let check = |key: &str, value: &str| {
        TargetKind::Docker
            .validate_settings(&BTreeMap::from([(key.to_owned(), value.to_owned())]))
            .map_err(|e| e.0)
    };
    let error = check("stop_timeout_seconds", "0").expect_err("zero");
    assert!(error.contains("stop_timeout_seconds"), "{error}");
    let error = check("stop_timeout_seconds", "soon").expect_err("not a number");
    assert!(error.starts_with("stop_timeout_seconds"), "{error}");
    for bad in ["../../x", "a/b", "-x", ".x", "", "x y"] {
        assert!(check("container_name", bad).is_err(), "{bad:?} accepted");
    }
    assert!(check("container_name", "web-1.blue_2").is_ok());
    let error = check("env.X", "${nope}").expect_err("bad reference");
    assert!(error.contains("env.X"), "{error}");
    assert!(check("env.X", "${secret.db_password}").is_ok());
}

fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

const FINGERPRINT: &str = "SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8";

#[test]
fn compose_targets_need_a_file_and_take_service_mappings() {
    let check = |pairs: &[(&str, &str)]| {
        TargetKind::Compose
            .validate_settings(&settings(pairs))
            .map_err(|e| e.0)
    };
    assert!(check(&[
        ("compose_file", "/srv/shop/compose.yml"),
        ("project", "shop_prod-1"),
        ("service.api", "backend"),
        ("compose_version", "v1"),
        ("sticker_dir", "/var/lib/stella/stickers"),
        ("health_timeout_seconds", "90"),
    ])
    .is_ok());
    let error = check(&[("project", "shop")]).expect_err("no file");
    assert!(error.contains("compose_file"), "{error}");
    for (key, value) in [
        ("compose_file", "compose.yml"),
        ("project", "Shop"),
        ("project", "-shop"),
        ("compose_version", "v3"),
        ("service.api", "back end"),
        ("service.", "x"),
        ("ports", "80:80"),
    ] {
        let result = check(&[("compose_file", "/srv/c.yml"), (key, value)]);
        assert!(result.is_err(), "{key}={value} accepted");
    }
}

#[test]
fn nomad_targets_need_an_address_and_a_job_and_take_the_token_from_a_secret() {
    let check = |pairs: &[(&str, &str)]| {
        TargetKind::Nomad
            .validate_settings(&settings(pairs))
            .map_err(|e| e.0)
    };
    let base = [("address", "https://nomad.internal:4646"), ("job", "shop")];
    let with = |extra: &[(&str, &str)]| {
        let mut pairs = base.to_vec();
        pairs.extend_from_slice(extra);
        check(&pairs)
    };
    assert!(with(&[
        ("namespace", "prod"),
        ("region", "eu"),
        ("token_secret", "${secret.nomad_token}"),
        ("ca_file", "/etc/stella/nomad-ca.pem"),
        ("task.api", "web/api"),
        ("task.worker", "worker"),
        ("deploy_timeout_seconds", "900"),
        ("components", "api,worker"),
    ])
    .is_ok());
    let error = check(&[("job", "shop")]).expect_err("no address");
    assert!(error.contains("needs address"), "{error}");
    let error = check(&[]).expect_err("nothing");
    assert!(error.contains("address and job"), "{error}");
    let error = with(&[("token_secret", "s.0123-plain")]).expect_err("plain token");
    assert!(error.contains("${secret.NAME}"), "{error}");
    let error = with(&[("image", "x")]).expect_err("unknown");
    assert!(error.contains("unknown setting `image`"), "{error}");
    for (key, value) in [
        ("address", "nomad:4646"),
        ("address", "http://nomad:4646/v1"),
        ("job", "a/b"),
        ("namespace", "has space"),
        ("task.api", "a/b/c"),
        ("task.api", "/api"),
        ("job_file", "job.hcl"),
        ("ca_file", "ca.pem"),
        ("deploy_timeout_seconds", "0"),
        ("host", "n"),
    ] {
        let mut pairs = base.to_vec();
        pairs.retain(|(k, _)| *k != key);
        pairs.push((key, value));
        assert!(check(&pairs).is_err(), "{key}={value} accepted");
    }
}

#[test]
fn ssh_targets_pin_the_host_key_and_never_hold_a_key_in_plain_text() {
    let check = |pairs: &[(&str, &str)]| {
        TargetKind::Ssh
            .validate_settings(&settings(pairs))
            .map_err(|e| e.0)
    };
    let base = [
        ("host", "10.0.0.7"),
        ("user", "deploy"),
        ("host_key", FINGERPRINT),
    ];
    let with = |extra: &[(&str, &str)]| {
        let mut pairs = base.to_vec();
        pairs.extend_from_slice(extra);
        check(&pairs)
    };
    assert!(with(&[("key_file", "/etc/stella/id_ed25519"), ("ports", "8080:80")]).is_ok());
    assert!(with(&[
        ("key_secret", "${secret.deploy_key}"),
        ("mode", "script"),
        ("script", "/opt/deploy.sh"),
        ("port", "2222"),
    ])
    .is_ok());
    let error = check(&[("host", "h"), ("key_file", "/k")]).expect_err("missing");
    assert!(
        error.contains("user") && error.contains("host_key"),
        "{error}"
    );
    let error = with(&[]).expect_err("no key");
    assert!(
        error.contains("key_file") && error.contains("key_secret"),
        "{error}"
    );
    let error = with(&[("key_file", "/k"), ("key_secret", "${secret.k}")]).expect_err("both");
    assert!(error.contains("exclude"), "{error}");
    for secret in [
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "${var.k}",
        "x${secret.k}",
    ] {
        let error = with(&[("key_secret", secret)]).expect_err(secret);
        assert!(error.contains("${secret.NAME}"), "{error}");
    }
    for fingerprint in [
        "nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8",
        "SHA256:short",
        "MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48",
    ] {
        let mut pairs = vec![("host", "h"), ("user", "u"), ("key_file", "/k")];
        pairs.push(("host_key", fingerprint));
        let error = check(&pairs).expect_err(fingerprint);
        assert!(error.contains("host_key"), "{error}");
    }
    let error = with(&[("key_file", "/k"), ("mode", "script")]).expect_err("no script");
    assert!(error.contains("script"), "{error}");
    let error = with(&[
        ("key_file", "/k"),
        ("mode", "script"),
        ("script", "x"),
        ("ports", "80:80"),
    ])
    .expect_err("docker key in script mode");
    assert!(error.contains("ports"), "{error}");
    let error = with(&[("key_file", "/k"), ("script", "x")]).expect_err("script without mode");
    assert!(error.contains("mode=script"), "{error}");
    assert!(with(&[("key_file", "/k"), ("port", "0")]).is_err());
    assert!(with(&[("key_file", "relative/key")]).is_err());
}

#[test]
fn winrm_targets_take_the_password_from_a_secret_and_basic_only_over_https() {
    let check = |pairs: &[(&str, &str)]| {
        TargetKind::Winrm
            .validate_settings(&settings(pairs))
            .map_err(|e| e.0)
    };
    let base = [
        ("endpoint", "https://win1.example:5986/wsman"),
        ("user", r"CORP\deploy"),
        ("password_secret", "${secret.win_password}"),
        ("script", r"& C:\deploy\deploy.ps1"),
    ];
    let with = |extra: &[(&str, &str)]| {
        let mut pairs: Vec<(&str, &str)> = base
            .iter()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .copied()
            .collect();
        pairs.extend_from_slice(extra);
        check(&pairs)
    };
    assert!(with(&[]).is_ok());
    assert!(with(&[
        ("auth", "basic"),
        ("ca_file", "/etc/stella/win1.pem"),
        ("sticker_dir", r"D:\Stella\stickers"),
        ("operation_timeout_seconds", "30"),
        ("command_timeout_seconds", "600"),
        ("components", "web"),
    ])
    .is_ok());
    let error = check(&[("endpoint", "https://w:5986/wsman")]).expect_err("missing");
    assert!(
        error.contains("user") && error.contains("password_secret") && error.contains("script"),
        "{error}"
    );
    for (key, value, needle) in [
        ("password_secret", "hunter2", "${secret.NAME}"),
        ("endpoint", "win1:5986", "endpoint"),
        ("auth", "kerberos", "auth"),
        ("sticker_dir", "/var/lib/stella", "sticker_dir"),
        ("ca_file", "ca.pem", "ca_file"),
        ("command_timeout_seconds", "0", "command_timeout_seconds"),
        ("host", "win1", "unknown setting"),
        ("https", "true", "unknown setting"),
    ] {
        let error = with(&[(key, value)]).expect_err(key);
        assert!(error.contains(needle), "{key}={value}: {error}");
    }
    let error = with(&[("endpoint", "http://win1:5985/wsman"), ("auth", "basic")])
        .expect_err("basic over http");
    assert!(error.contains("https"), "{error}");
    assert!(with(&[("endpoint", "http://win1:5985/wsman")]).is_ok());
    assert!(with(&[
        ("endpoint", "http://win1:5985/wsman"),
        ("ca_file", "/c.pem")
    ])
    .is_err());
}

#[test]
fn ecs_targets_name_their_service_and_hold_credentials_only_as_secret_references() {
    let check = |pairs: &[(&str, &str)]| {
        TargetKind::Ecs
            .validate_settings(&settings(pairs))
            .map_err(|e| e.0)
    };
    let base = [
        ("region", "eu-central-1"),
        ("cluster", "prod"),
        ("service", "shop"),
    ];
    let with = |extra: &[(&str, &str)]| {
        let mut pairs = base.to_vec();
        pairs.extend_from_slice(extra);
        check(&pairs)
    };
    assert!(with(&[]).is_ok(), "the agent's environment holds the keys");
    assert!(with(&[
        ("access_key_secret", "${secret.aws_id}"),
        ("secret_key_secret", "${secret.aws_key}"),
        ("session_token_secret", "${secret.aws_token}"),
        ("endpoint_url", "http://127.0.0.1:5000"),
        ("container.api", "shop-api"),
        ("components", "api"),
        ("deploy_timeout_seconds", "600"),
        ("poll_interval_ms", "500"),
    ])
    .is_ok());
    let error = check(&[("region", "eu-central-1")]).expect_err("missing");
    assert!(
        error.contains("cluster") && error.contains("service"),
        "{error}"
    );
    let error = with(&[("access_key_secret", "${secret.aws_id}")]).expect_err("half");
    assert!(error.contains("together"), "{error}");
    let error = with(&[("session_token_secret", "${secret.t}")]).expect_err("token alone");
    assert!(error.contains("needs"), "{error}");
    for key in ["access_key_secret", "secret_key_secret"] {
        let error = with(&[
            ("access_key_secret", "${secret.aws_id}"),
            ("secret_key_secret", "${secret.aws_key}"),
            (key, "AKIAIOSFODNN7EXAMPLE"),
        ])
        .expect_err(key);
        assert!(error.contains("${secret.NAME}"), "{error}");
    }
    for (key, value) in [
        ("region", "EU Central"),
        ("endpoint_url", "ecs.local"),
        ("deploy_timeout_seconds", "0"),
        ("poll_interval_ms", "10"),
        ("container.api", ""),
        ("container.", "x"),
        ("credentials_secret", "${secret.x}"),
        ("ports", "80:80"),
    ] {
        assert!(with(&[(key, value)]).is_err(), "{key}={value} accepted");
    }
}

#[test]
fn sim_targets_take_any_settings_but_still_check_references() {
    let free = settings(&[("apply_ms", "250"), ("colour", "blue"), ("ports", "any")]);
    assert!(TargetKind::Sim.validate_settings(&free).is_ok());
    assert_eq!("sim".parse::<TargetKind>().ok(), Some(TargetKind::Sim));
    let bad = settings(&[("token", "${nope}")]);
    assert!(TargetKind::Sim.validate_settings(&bad).is_err());
}
