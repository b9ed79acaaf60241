//! Node B's record holder on its own, for the host tests: serves on the
//! given address (port 0 picks one), prints `listening PORT`, and holds
//! until killed (see `tandem::peer::Holder`; the daemon's `tandem-target
//! hold` is the same holder).
//!
//! Usage: peer-holder ADDRESS DIR NODE_ID

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    env_logger::init();
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 4, "usage: peer-holder ADDRESS DIR NODE_ID");
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
    holder.serve(listener, Arc::new(AtomicBool::new(false)))?;
    Ok(())
}
