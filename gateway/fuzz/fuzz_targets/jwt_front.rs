//! The JWT front (size cap, header parse, alg/kid checks, signature): garbage is rejected,
//! never accepted and never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn provider() -> &'static gateway::auth::JwtProvider {
    static P: OnceLock<gateway::auth::JwtProvider> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("jwt-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("secret"), [7u8; 48]).expect("secret");
        let conf: gateway::config::file::JwtProviderConf = toml::from_str(&format!(
            "issuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\nsecret_file = \"{}\"\n",
            dir.join("secret").display()
        ))
        .expect("conf");
        gateway::auth::JwtProvider::try_from_conf("fuzz", &conf, &dir).expect("provider")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    assert!(rt.block_on(provider().verify(token)).is_err(), "{token:?} accepted");
});
