//! `rabbitmq.conf` reading: keys, values, warnings and errors.

use super::*;

#[test]
fn reads_known_keys_and_warns_about_others() {
    let mut c = Config::default();
    let warnings = c
        .apply(
            "# comment\nlisteners.tcp.default = 127.0.0.1:5673\nheartbeat = 5 # inline\nframe_max = 65536\n\
             channel_max = 16\nhandshake_timeout = 2000\ndefault_user = bob\ndefault_pass = secret\n\
             default_vhost = dev\nvm_memory_high_watermark.relative = 0.4\nheartbeet = 3\n",
        )
        .unwrap();
    assert_eq!(c.listen, "127.0.0.1:5673".parse().unwrap());
    assert_eq!((c.heartbeat, c.frame_max, c.channel_max), (5, 65536, 16));
    assert_eq!(c.handshake_timeout, Duration::from_secs(2));
    assert_eq!(c.users, vec![UserConfig { tags: vec!["administrator".into()], ..UserConfig::plain("bob", "secret") }]);
    assert_eq!(c.vhosts, vec!["dev".to_string()]);
    assert_eq!(c.permissions, vec![PermissionConfig::full("bob", "dev")]);
    assert!(c.loopback_users.is_empty(), "only guest is loopback-only by default");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!((warnings[0].line, warnings[0].key.as_str()), (11, "heartbeet"));
    assert!(warnings[0].to_string().contains("line 11"));
}

#[test]
fn the_example_file_is_read_without_a_warning() {
    let mut c = Config::default();
    let warnings = c.apply(include_str!("../../rabbitmq.conf.example")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(c, Config::default(), "the example documents the defaults");
}

#[test]
fn watermarks_and_sizes() {
    assert_eq!(parse_size("512MB"), Some(512_000_000));
    assert_eq!(parse_size("64MiB"), Some(64 << 20));
    assert_eq!(parse_size("2GB"), Some(2_000_000_000));
    assert_eq!(parse_size("1024"), Some(1024));
    assert_eq!(parse_size("lots"), None);
    let mut c = Config::default();
    c.apply("vm_memory_high_watermark.absolute = 64MB").unwrap();
    assert_eq!(c.memory_high_watermark, Watermark::Absolute(64_000_000));
    c.apply("vm_memory_high_watermark.relative = 0.6").unwrap();
    assert_eq!(c.memory_high_watermark, Watermark::Relative(0.6));
    assert!(c.apply("vm_memory_high_watermark.relative = 2").is_err());
    c.apply("disk_free_limit.absolute = 2GB").unwrap();
    assert_eq!(c.disk_free_limit, DiskLimit::Absolute(2_000_000_000));
    c.apply("disk_free_limit.relative = 1.5").unwrap();
    assert_eq!(c.disk_free_limit, DiskLimit::Relative(1.5));
    assert!(c.apply("disk_free_limit.relative = much").is_err());
    assert!(c.apply("disk_free_limit.absolute = -1").is_err());
    c.apply("data_dir = /var/lib/warren").unwrap();
    assert_eq!(c.data_dir.as_deref(), Some(Path::new("/var/lib/warren")));
}

#[test]
fn a_bare_port_listens_on_loopback() {
    let mut c = Config::default();
    c.apply("listeners.tcp.default = 5999").unwrap();
    assert_eq!(c.listen, "127.0.0.1:5999".parse().unwrap());
}

#[test]
fn bad_values_name_the_line() {
    let mut c = Config::default();
    let e = c.apply("\nheartbeat = soon").unwrap_err();
    assert!(e.0.starts_with("line 2:"), "{e}");
    assert!(c.apply("frame_max = 100").is_err());
    assert!(c.apply("just words").is_err());
}

#[test]
fn the_example_file_reads_with_no_unknown_key() {
    let mut c = Config::default();
    let warnings = c.apply(include_str!("../../rabbitmq.conf.example")).unwrap();
    let unknown: Vec<_> = warnings.iter().filter(|w| w.reason.starts_with("unknown")).collect();
    assert!(unknown.is_empty(), "{unknown:?}");
}
