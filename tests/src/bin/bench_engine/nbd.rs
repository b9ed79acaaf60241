//! The remote-secondary benchmark: the mirror pool's full copy of a filled
//! primary to an nbdkit export over a link with a round trip of `--rtt`
//! (a delay line on loopback), against `nbdcopy` copying the same file to
//! the same export through the same link. Goal: >= 0.8 x nbdcopy.

use super::*;
use tandem_tests::proxy::DelayLine;

/// nbdkit's file plugin on 127.0.0.1 at a free port, killed when dropped.
struct Nbdkit(std::process::Child);

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nbdkit(file: &Path) -> anyhow::Result<(Nbdkit, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("nbdkit")
        .args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .arg("file")
        .arg(file)
        .stdin(Stdio::null())
        .spawn()
        .context("run nbdkit (Debian's nbdkit package)")?;
    let server = Nbdkit(child);
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            t0.elapsed() < Duration::from_secs(20),
            "nbdkit did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((server, port))
}

pub(crate) fn nbd_bench(a: &NbdArgs) -> anyhow::Result<Value> {
    let quick = a.common.quick;
    let size = size_arg(&a.size, 1 << 30, 64 << 20, quick)?;
    let rounds = a.rounds.unwrap_or(if quick { 1 } else { 3 });
    let rtt = tandem::units::parse_duration(&a.rtt)?;
    println!(
        "\n## Remote secondary: full copy of a {} primary to an nbdkit export over a {} ms \
         round trip (a delay line on loopback), the engine's mirror pool against nbdcopy, \
         {rounds} interleaved rounds",
        format_size(size),
        rtt.as_millis()
    );
    let dir = &a.dir;
    let paths = paths_in(dir, "nbd");
    let export = dir.join("bench-nbd-export.img");
    remove_all(&paths)?;
    remove(&export)?;
    write_data_file(&paths.primary, size, 11)?;
    create_sparse(&export, size)?;
    let (server, port) = nbdkit(&export)?;
    let link = DelayLine::start(port, rtt / 2)?;
    let uri = format!("nbd://127.0.0.1:{}/", link.port);
    let tools = ["engine mirror pool", "nbdcopy"];
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    for round in 0..rounds {
        for k in 0..tools.len() {
            let i = (round + k) % tools.len();
            // The export starts blank each time.
            File::options().write(true).open(&export)?.set_len(0)?;
            File::options().write(true).open(&export)?.set_len(size)?;
            let t = if i == 0 {
                remove(&paths.record)?;
                let mut p = paths.clone();
                p.secondary = uri.clone().into();
                let config = EngineConfig::default();
                let t0 = Instant::now();
                let engine = Engine::open(p.open(&config)?, &config)?;
                ensure!(
                    engine.wait_synced(Duration::from_secs(1800)),
                    "the mirror did not catch up within 30 minutes: {:?}",
                    engine.status().last_error
                );
                let t = t0.elapsed().as_secs_f64();
                engine.shutdown()?;
                t
            } else {
                let t0 = Instant::now();
                let st = Command::new("nbdcopy")
                    .arg(&paths.primary)
                    .arg(&uri)
                    .status()
                    .context("run nbdcopy (Debian's libnbd-bin)")?;
                ensure!(st.success(), "nbdcopy: {st}");
                t0.elapsed().as_secs_f64()
            };
            ensure!(
                same_contents(&paths.primary, &export, size)?,
                "{}: the export differs from the primary after the copy",
                tools[i]
            );
            secs[i].push(t);
        }
    }
    drop(server);
    remove_all(&paths)?;
    remove(&export)?;
    println!();
    let (rows, ratios) = copier_table(&tools, &secs, size, &[(1, "vs_nbdcopy")]);
    Ok(json!({
        "bytes": size, "rtt_ms": rtt.as_secs_f64() * 1000.0, "rounds": rounds,
        "copiers": rows, "ratios": ratios,
    }))
}
