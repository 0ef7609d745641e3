//! Facts about the agent's host, sent in `Hello`.

use serde::{Deserialize, Serialize};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

use stella_proto::v1;

/// What the agent reports about its host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// Host name.
    pub hostname: String,
    /// Operating system name (`Debian GNU/Linux`, `Windows`, …).
    pub os_name: String,
    /// Operating system version.
    pub os_version: String,
    /// Kernel version.
    pub kernel_version: String,
    /// CPU architecture (`x86_64`, `aarch64`, …).
    pub arch: String,
    /// Logical CPUs.
    pub cpu_count: u32,
    /// Physical memory.
    pub memory_total_bytes: u64,
    /// When the host booted.
    pub boot_time_unix_seconds: i64,
}

impl HostFacts {
    /// Reads the facts of this host (blocking: sysinfo reads `/proc`).
    pub fn collect() -> HostFacts {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        let cpu_count = match system.cpus().len() {
            0 => std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get),
            n => n,
        };
        HostFacts {
            hostname: System::host_name().unwrap_or_default(),
            os_name: System::name().unwrap_or_default(),
            os_version: System::os_version().unwrap_or_default(),
            kernel_version: System::kernel_version().unwrap_or_default(),
            arch: System::cpu_arch(),
            cpu_count: u32::try_from(cpu_count).unwrap_or(u32::MAX),
            memory_total_bytes: system.total_memory(),
            boot_time_unix_seconds: i64::try_from(System::boot_time()).unwrap_or(0),
        }
    }

    /// [`HostFacts::collect`] off the async executor.
    pub async fn collect_async() -> HostFacts {
        tokio::task::spawn_blocking(HostFacts::collect)
            .await
            .unwrap_or_default()
    }
}

impl From<HostFacts> for v1::HostFacts {
    fn from(facts: HostFacts) -> Self {
        v1::HostFacts {
            hostname: facts.hostname,
            os_name: facts.os_name,
            os_version: facts.os_version,
            kernel_version: facts.kernel_version,
            arch: facts.arch,
            cpu_count: facts.cpu_count,
            memory_total_bytes: facts.memory_total_bytes,
            boot_time_unix_seconds: facts.boot_time_unix_seconds,
        }
    }
}

/// The host name, the default agent name.
pub(crate) async fn host_name() -> String {
    tokio::task::spawn_blocking(System::host_name)
        .await
        .ok()
        .flatten()
        .map(|name| name.to_lowercase())
        .unwrap_or_else(|| "agent".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_this_host() {
        let facts = HostFacts::collect();
        assert!(!facts.hostname.is_empty());
        assert!(!facts.arch.is_empty());
        assert!(facts.cpu_count > 0);
        assert!(facts.memory_total_bytes > 0);
        assert!(facts.boot_time_unix_seconds > 0);
    }
}
