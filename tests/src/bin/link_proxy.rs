//! The link between two nodes, as a test controls it (for the VM cases,
//! where both nodes run in one machine over loopback): listens on
//! 127.0.0.1:LISTEN, forwards to 127.0.0.1:UPSTREAM, and reads CONTROL every
//! 50 ms: `cut` cuts every connection and refuses new ones, `open` (or an
//! empty or missing file) forwards, `delay US` slows every chunk.
//!
//! Usage: link-proxy LISTEN UPSTREAM CONTROL

use std::time::Duration;

use anyhow::{bail, Context};
use tandem_tests::proxy::Proxy;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        bail!("usage: link-proxy LISTEN UPSTREAM CONTROL");
    }
    let port = |s: &str| s.parse::<u16>().with_context(|| format!("port {s:?}"));
    let proxy = Proxy::start_on(port(&args[1])?, port(&args[2])?)
        .with_context(|| format!("listen on 127.0.0.1:{}", args[1]))?;
    println!(
        "link-proxy on 127.0.0.1:{} to 127.0.0.1:{}",
        proxy.port, args[2]
    );
    let mut was = String::new();
    loop {
        let now = std::fs::read_to_string(&args[3]).unwrap_or_default();
        let now = now.trim().to_string();
        if now != was {
            let mut words = now.split_whitespace();
            match (words.next(), words.next()) {
                (Some("cut"), None) => proxy.set_cut(true),
                (None, None) | (Some("open"), None) => {
                    proxy.set_cut(false);
                    proxy
                        .delay_us
                        .store(0, std::sync::atomic::Ordering::Relaxed);
                }
                (Some("delay"), Some(us)) => match us.parse() {
                    Ok(us) => proxy
                        .delay_us
                        .store(us, std::sync::atomic::Ordering::Relaxed),
                    Err(_) => eprintln!("link-proxy: {:?}: delay takes microseconds", now),
                },
                _ => eprintln!("link-proxy: {now:?}: expected cut, open or delay US"),
            }
            println!("link-proxy: {}", if now.is_empty() { "open" } else { &now });
            was = now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
