//! Node B's record holder on its own, for the host tests: serves on the
//! given address (port 0 picks one), prints `listening PORT`, and holds
//! until killed (see `tandem::peer::Holder`; the daemon's `tandem-target
//! hold` is the same holder).
//!
//! With takeover specs (`lease=PATH,primary=PATH,secondary=PATH`) it
//! watches each device's lease, takes the device over when its owner's
//! lease expires, and prints `takeover JSON` (a `TakeoverReport`).
//!
//! Usage: peer-holder ADDRESS DIR NODE_ID [SPEC...]

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    env_logger::init();
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 4,
        "usage: peer-holder ADDRESS DIR NODE_ID [SPEC...]"
    );
    let specs = args[4..]
        .iter()
        .map(|s| s.parse::<tandem::peer::TakeoverSpec>())
        .collect::<Result<Vec<_>, _>>()?;
    let node: u64 = args[3]
        .parse()
        .with_context(|| format!("node id {:?}", args[3]))?;
    let listener =
        std::net::TcpListener::bind(&args[1]).with_context(|| format!("listen on {}", args[1]))?;
    println!("listening {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let holder = Arc::new(tandem::peer::Holder::new(
        std::path::Path::new(&args[2]),
        node,
    )?);
    let stop = Arc::new(AtomicBool::new(false));
    for spec in specs {
        let (holder, stop) = (holder.clone(), stop.clone());
        std::thread::spawn(move || {
            holder.watch(&spec, &stop, |report| {
                let json = serde_json::to_string(report).expect("a report serializes");
                println!("takeover {json}");
                let _ = std::io::stdout().flush();
            })
        });
    }
    holder.serve(listener, stop)?;
    Ok(())
}
