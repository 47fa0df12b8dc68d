use clap::Parser;

fn main() {
    let args = ember_cli::cmd::quantize::Args::parse();
    ember_cli::guard(|| ember_cli::cmd::quantize::run(args));
}
