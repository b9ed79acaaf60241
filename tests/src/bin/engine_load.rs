//! The engine under load until killed: the child that the crash test and
//! the recovery benchmark SIGKILL (see `tandem_tests::load`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    env_logger::init();
    tandem_tests::load::run(&tandem_tests::load::LoadArgs::parse())
}
