//! The command line (clap derive). The flags and `--only` values are documented in
//! docs/benchmarks.md.

use clap::{Parser, ValueEnum};

/// A section of the bench, as `--only` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Section {
    /// 1. connect() + first byte latency: direct, BPF VIP, iptables DNAT
    Latency,
    /// 2. map programming: full sync of 10 000 × 10, endpoint churn
    Programming,
    /// 3. agent memory (RSS, peak RSS) at 10 000 × 10
    Rss,
    /// 4. agent hot upgrade (handover); also runs the layout-2 agent
    Handover,
    /// 5. Kubernetes source vs kube-proxy on a real kube-apiserver (not in the default run)
    KubeProxy,
}

/// A proxy setup of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// baton-agent --source kubernetes, default settings (--poll-ms 200)
    Baton,
    /// baton-agent --source kubernetes --poll-ms 10
    BatonFast,
    /// kube-proxy --proxy-mode iptables, default settings
    Iptables,
    /// kube-proxy --proxy-mode nftables, default settings
    Nftables,
    /// kube-proxy iptables with the docs' large-cluster advice: --iptables-min-sync-period 10s
    IptablesLarge,
    /// kube-proxy nftables with a 10 s minSyncPeriod (`--iptables-min-sync-period`, shared by both modes)
    NftablesLarge,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Baton => "Baton (defaults: watch events wake the build)",
            Mode::BatonFast => "Baton --poll-ms 10",
            Mode::Iptables => "kube-proxy iptables (defaults)",
            Mode::Nftables => "kube-proxy nftables (defaults)",
            Mode::IptablesLarge => "kube-proxy iptables, min-sync-period 10s",
            Mode::NftablesLarge => "kube-proxy nftables, min-sync-period 10s",
        }
    }

    pub fn is_baton(self) -> bool {
        matches!(self, Mode::Baton | Mode::BatonFast)
    }
}

/// Connect latency (direct / BPF VIP / iptables DNAT), map programming speed, agent memory and
/// agent hot upgrades, measured in a private cgroup and network namespace. Run as root.
#[derive(Debug, Parser)]
#[command(
    name = "baton-bench",
    // A flag given twice keeps its last value (`--only` collects every one).
    args_override_self = true,
    after_help = "Environment: BATON_AGENT_BIN (the agent of `--only rss`; default: baton-agent \
                  next to this binary), BATON_AGENT_V1 / BATON_AGENT_V2 (the agents of `--only \
                  handover`). Needs root, cgroup v2, iptables-restore and ip. See \
                  docs/benchmarks.md."
)]
pub struct Args {
    /// CI smoke run: 300 latency rounds, 0.5 s churn, fewer handovers
    #[arg(long)]
    pub quick: bool,
    /// Latency rounds per table [default: 20000, or 300 with --quick]
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Pin the whole bench, its backends and the agent child to CPU N
    #[arg(long, value_name = "N", default_value_t = 0, overrides_with = "no_pin")]
    cpu: usize,
    /// Do not pin the bench to a CPU (the later of --cpu and --no-pin wins)
    #[arg(long, overrides_with = "cpu")]
    no_pin: bool,
    /// Run only this section; repeatable [default: sections 1-4]
    #[arg(long, value_enum, value_name = "SECTION")]
    only: Vec<Section>,
    /// kube-proxy section: cluster sizes in bulk Services, grown in order
    /// [default: 10,1000,10000; --quick: 1000]
    #[arg(long, value_delimiter = ',', value_name = "N,..")]
    kube_sizes: Vec<usize>,
    /// kube-proxy section: the proxies compared, one after the other
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "MODE,..",
        default_value = "baton,baton-fast,iptables,nftables"
    )]
    kube_modes: Vec<Mode>,
    /// kube-proxy section: endpoint churn rates (changes/s) [default: 10,100,1000; --quick:
    /// 100,1000]
    #[arg(long, value_delimiter = ',', value_name = "R,..")]
    kube_rates: Vec<u32>,
    /// kube-proxy section: propagation samples per rate [default: 20; --quick: 5]
    #[arg(long, value_name = "N")]
    kube_samples: Option<usize>,
    /// kube-proxy section: connect latency rounds per proxy and size [default: 2000; --quick: 200]
    #[arg(long, value_name = "N")]
    kube_rounds: Option<usize>,
}

impl Args {
    /// Latency rounds per table.
    pub fn rounds(&self) -> usize {
        self.rounds.unwrap_or(if self.quick { 300 } else { 20_000 })
    }

    /// CPU to pin the whole bench (client, backends, agent) to; `None` = no pinning.
    pub fn cpu(&self) -> Option<usize> {
        (!self.no_pin).then_some(self.cpu)
    }

    /// Whether `section` runs (sections 1-4 do without `--only`; the kube-proxy section, which
    /// needs the Kubernetes binaries and runs for minutes, only when named).
    pub fn runs(&self, section: Section) -> bool {
        if self.only.is_empty() {
            return section != Section::KubeProxy;
        }
        self.only.contains(&section)
    }

    pub fn kube_sizes(&self) -> Vec<usize> {
        match (self.kube_sizes.is_empty(), self.quick) {
            (false, _) => self.kube_sizes.clone(),
            (true, true) => vec![1_000],
            (true, false) => vec![10, 1_000, 10_000],
        }
    }

    pub fn kube_modes(&self) -> Vec<Mode> {
        self.kube_modes.clone()
    }

    pub fn kube_rates(&self) -> Vec<u32> {
        if self.kube_rates.is_empty() {
            if self.quick {
                vec![100, 1_000]
            } else {
                vec![10, 100, 1_000]
            }
        } else {
            self.kube_rates.clone()
        }
    }

    pub fn kube_samples(&self) -> usize {
        self.kube_samples.unwrap_or(if self.quick { 5 } else { 20 })
    }

    /// kube-proxy section: how long one endpoint change may take to show before it counts as
    /// a timeout (three timeouts end that rate).
    pub fn kube_change_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(if self.quick { 10 } else { 30 })
    }

    pub fn kube_rounds(&self) -> usize {
        self.kube_rounds
            .unwrap_or(if self.quick { 200 } else { 2_000 })
    }
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("baton-bench").chain(args.iter().copied()))
    }

    const ALL: [Section; 4] = [
        Section::Latency,
        Section::Programming,
        Section::Rss,
        Section::Handover,
    ];

    #[test]
    fn command_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_run_everything_pinned_to_cpu_0() {
        let a = parse(&[]).unwrap();
        assert!(!a.quick);
        assert_eq!(a.rounds(), 20_000);
        assert_eq!(a.cpu(), Some(0));
        assert!(ALL.iter().all(|&s| a.runs(s)));
    }

    #[test]
    fn quick_ci_run() {
        let a = parse(&["--quick"]).unwrap();
        assert!(a.quick);
        assert_eq!(a.rounds(), 300);
        assert!(ALL.iter().all(|&s| a.runs(s)));
    }

    #[test]
    fn sections_rounds_and_cpu() {
        let a = parse(&[
            "--only",
            "programming",
            "--rounds",
            "50",
            "--only",
            "rss",
            "--cpu",
            "1",
            "--quick",
        ])
        .unwrap();
        assert_eq!(a.rounds(), 50);
        assert_eq!(a.cpu(), Some(1));
        assert!(a.runs(Section::Programming) && a.runs(Section::Rss));
        assert!(!a.runs(Section::Latency) && !a.runs(Section::Handover));
        let a = parse(&["--only", "handover"]).unwrap();
        assert!(a.runs(Section::Handover) && !a.runs(Section::Latency));
    }

    #[test]
    fn last_of_cpu_and_no_pin_wins() {
        assert_eq!(parse(&["--no-pin"]).unwrap().cpu(), None);
        assert_eq!(parse(&["--cpu", "1", "--no-pin"]).unwrap().cpu(), None);
        assert_eq!(parse(&["--no-pin", "--cpu", "1"]).unwrap().cpu(), Some(1));
        assert_eq!(
            parse(&["--rounds", "5", "--rounds", "7"]).unwrap().rounds(),
            7
        );
    }

    #[test]
    fn unknown_section_is_rejected_with_the_valid_ones() {
        let e = parse(&["--only", "bogus"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
        let msg = e.to_string();
        assert!(msg.contains("'bogus'"), "{msg}");
        assert!(
            msg.contains("[possible values: latency, programming, rss, handover, kube-proxy]"),
            "{msg}"
        );
    }

    #[test]
    fn bad_values_and_flags_are_rejected() {
        let kind = |args: &[&str]| parse(args).map(|_| ()).unwrap_err().kind();
        assert_eq!(kind(&["--rounds", "many"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["--rounds"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["--cpu", "-1"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["--bogus"]), ErrorKind::UnknownArgument);
    }
}
