//! `stella completions SHELL`: a completion script for bash, zsh, fish, elvish or
//! PowerShell, made from the same command line the binary parses.

use clap::Args;
use clap_complete::Shell;

/// `stella completions SHELL`
#[derive(Debug, Args)]
#[command(after_help = "\
Install:
  bash  stella completions bash > ~/.local/share/bash-completion/completions/stella
  zsh   stella completions zsh > \"${fpath[1]}/_stella\"
  fish  stella completions fish > ~/.config/fish/completions/stella.fish")]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: Shell,
}

/// Writes the script for `args.shell` to stdout.
pub fn print(args: &CompletionsArgs, mut command: clap::Command) {
    clap_complete::generate(args.shell, &mut command, "stella", &mut std::io::stdout());
}
