//! `lamina keys`: the API keys file of `lamina node --api-keys`.

use clap::Subcommand;
use std::path::PathBuf;

use super::OutputFormat;

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a key, print it once (only its hash is stored) and add it to the file.
    Add {
        /// The keys file (created, mode 0600, if missing).
        #[arg(long)]
        file: PathBuf,
        /// Who the key is for: shown in audit lines and /v1/usage.
        #[arg(long)]
        name: String,
        /// Requests per minute.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rpm: Option<u32>,
        /// Tokens (prompt and completion) per UTC day.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        tokens_per_day: Option<u64>,
        /// Requests in flight at once.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        concurrent: Option<u32>,
    },
    /// List the keys' names and limits.
    List {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Remove a key; running nodes stop accepting it at its next use.
    Revoke {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        name: String,
    },
}
