//! `tandemctl`: parses the command line, runs the command from the library,
//! prints the outcome. Errors go to stderr with exit code 1.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use std::time::Duration;

use tandem::control::Request;
use tandemctl::{device, events, metrics, ops, pair, simulate, system, Cli};

fn main() -> ExitCode {
    env_logger::init();
    let cli = Cli::parse();
    let json = cli.json();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if json => {
            // Scripts that asked for JSON get their errors as JSON, on stdout
            // like the results, and the exit code says it failed.
            println!("{}", tandemctl::error_json(&e));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tandemctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("cannot encode as JSON")?
    );
    Ok(())
}

/// A request whose answer is printed only as JSON.
fn ask(name: &str, common: &tandemctl::Common, req: Request) -> anyhow::Result<()> {
    let v = ops::ask(name, &common.run_dir, &req)?;
    if common.json {
        print_json(&v)?;
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli {
        Cli::Add {
            name,
            mut args,
            common,
        } => {
            args.make_absolute()?;
            let run_dir = tandem::args::absolute(&common.run_dir)?;
            let started = device::add(&name, &args, &run_dir)?;
            if common.json {
                print_json(&started)?;
            } else {
                println!("{}", started.device);
            }
        }
        Cli::Enable {
            name,
            args,
            config_dir,
            no_start,
            replace,
            common,
        } => {
            let e = system::enable(&name, *args, &config_dir, no_start, replace)?;
            for w in &e.warnings {
                eprintln!("tandemctl: warning: {w}");
            }
            if common.json {
                print_json(&e)?;
            } else if e.started {
                let shown = system::served_device(&name, &common.run_dir)
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default();
                println!("{}{shown}", e.device.unwrap_or_default());
            } else {
                println!("{} written; {} starts at boot", e.config, e.unit);
            }
        }
        Cli::Disable {
            name,
            config_dir,
            no_stop,
            common,
        } => {
            let d = system::disable(&name, &config_dir, no_stop)?;
            if common.json {
                print_json(&d)?;
            }
        }
        Cli::Verify {
            name,
            repair,
            max_rate,
            common,
        } => {
            let rep = ops::verify(&name, &common.run_dir, repair, max_rate)?;
            print_json(&rep)?;
            ops::verify_outcome(&name, &rep)?;
        }
        Cli::Set {
            name,
            max_copy_rate,
            max_lag,
            common,
        } => {
            let v = ops::set(&name, &common.run_dir, max_copy_rate, max_lag)?;
            if common.json {
                print_json(&v)?;
            }
        }
        Cli::Pause { name, common } => ask(&name, &common, Request::Pause)?,
        Cli::Resume { name, common } => ask(&name, &common, Request::Resume)?,
        Cli::Invalidate { name, common } => ask(&name, &common, Request::Invalidate)?,
        Cli::Events {
            once,
            interval_ms,
            common,
        } => {
            use std::io::Write;
            let every = Duration::from_millis(interval_ms.max(10));
            events::stream(&common.run_dir, every, once, |e| {
                let line = if common.json {
                    serde_json::to_string(e).unwrap_or_default()
                } else {
                    e.line()
                };
                // A closed pipe (`| head`) ends the stream.
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
            })?;
        }
        Cli::Metrics {
            listen,
            once,
            common,
        } => {
            if once {
                print!("{}", metrics::render(&common.run_dir)?);
            } else {
                metrics::serve(&listen, &common.run_dir)?;
            }
        }
        Cli::GenDocs { dir } => tandemctl::gen_docs(&dir)?,
        Cli::SystemdGenerator { dirs } => system::generator_main(&dirs),
        Cli::UdevName { kernel, common } => match system::udev_name(&kernel, &common.run_dir)? {
            Some(n) => println!("{n}"),
            None => std::process::exit(1),
        },
        Cli::Recover { name, common } => {
            let started = device::recover(&name, &common.run_dir)?;
            if common.json {
                print_json(&started)?;
            } else {
                println!("{}", started.device);
            }
        }
        Cli::List { common } => {
            let devices = device::list(&common.run_dir)?;
            if common.json {
                print_json(&devices)?;
            } else {
                println!(
                    "{:<16} {:<14} {:>8} {:<11} {:>12}  primary -> secondary",
                    "name", "device", "pid", "state", "dirty"
                );
                for d in devices {
                    println!(
                        "{:<16} {:<14} {:>8} {:<11} {:>12}  {} -> {}",
                        d.name,
                        d.device,
                        d.pid,
                        d.state,
                        d.dirty_bytes
                            .map(tandem::units::format_size)
                            .unwrap_or_else(|| "-".into()),
                        d.primary,
                        d.secondary
                    );
                }
            }
        }
        Cli::Status {
            name,
            field,
            common,
        } => {
            let v = device::status(&name, &common.run_dir)?;
            if !field.is_empty() {
                // Every field is checked before any is printed.
                let lines = field
                    .iter()
                    .map(|f| device::status_field(&v, f))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                for l in lines {
                    println!("{l}");
                }
            } else if common.json {
                print_json(&v)?;
            } else {
                print!("{}", device::format_status(&v));
            }
        }
        Cli::WaitSynced {
            name,
            timeout,
            common,
        } => {
            let v = device::wait_synced(&name, &common.run_dir, timeout.map(Duration::from_secs))?;
            if common.json {
                print_json(&v)?;
            }
        }
        Cli::Del {
            name,
            timeout,
            common,
        } => {
            device::del(&name, &common.run_dir, Duration::from_secs(timeout))?;
            if common.json {
                print_json(&serde_json::json!({"name": name, "deleted": true}))?;
            }
        }
        Cli::Lease { path, json } => {
            let b = pair::lease(&path)?;
            if json {
                print_json(&b)?;
            } else {
                print!("{}", pair::format_lease(&path, &b));
            }
        }
        Cli::Promote {
            name,
            holder_dir,
            wait,
            mut args,
            common,
        } => {
            args.make_absolute()?;
            let run_dir = tandem::args::absolute(&common.run_dir)?;
            let started = pair::promote(
                &name,
                &args,
                &holder_dir,
                &run_dir,
                Duration::from_secs(wait),
            )?;
            if common.json {
                print_json(&started)?;
            } else {
                println!("{}", started.device);
            }
        }
        Cli::Holder { common } => {
            let st = pair::holder(&common.run_dir)?;
            if common.json {
                print_json(&st)?;
            } else {
                print!("{}", pair::format_holder(&st));
            }
        }
        Cli::Fence {
            name,
            reason,
            common,
        } => {
            let v = pair::fence(&name, &common.run_dir, &reason)?;
            if common.json {
                print_json(&v)?;
            }
        }
        Cli::Simulate(args) => {
            let results = simulate::run(&args)?;
            if args.json {
                let json = serde_json::to_string_pretty(&results)
                    .context("cannot encode the results as JSON")?;
                println!("{json}");
            } else {
                print!("{}", simulate::table(&results));
            }
        }
    }
    Ok(())
}
