use clap::{Parser, Subcommand};
use ember_cli::cmd;

/// Ember: run, inspect and compare quantized `.ember` models.
#[derive(Parser)]
#[command(name = "ember", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Run(cmd::run::Args),
    Inspect(cmd::inspect::Args),
    Compare(cmd::compare::Args),
    Demo(cmd::demo::Args),
    Bench(cmd::bench::Args),
    Serve(cmd::serve::Args),
    Loadgen(cmd::loadgen::Args),
    Finetune(cmd::finetune::Args),
    Embed(cmd::embed::Args),
}

fn main() {
    let cli = Cli::parse();
    ember_cli::guard(|| match cli.cmd {
        Cmd::Run(a) => cmd::run::run(a),
        Cmd::Inspect(a) => cmd::inspect::run(a),
        Cmd::Compare(a) => cmd::compare::run(a),
        Cmd::Demo(a) => cmd::demo::run(a),
        Cmd::Bench(a) => cmd::bench::run(a),
        Cmd::Serve(a) => cmd::serve::run(a),
        Cmd::Loadgen(a) => cmd::loadgen::run(a),
        Cmd::Finetune(a) => cmd::finetune::run(a),
        Cmd::Embed(a) => cmd::embed::run(a),
    });
}
