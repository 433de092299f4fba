//! What `/proc` says about processes: CPU time and resident memory.

use std::collections::HashMap;

/// Clock ticks per second, for `/proc/PID/stat` times.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// The fields of `/proc/PID/stat` after the command name (which may hold
/// spaces and parentheses), and the command name.
fn stat_fields(pid: u32) -> Option<(String, Vec<String>)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text[open + 1..close].to_string();
    let fields = text[close + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Some((name, fields))
}

/// User plus system CPU time of a process (all its threads), in ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let (_, fields) = stat_fields(pid)?;
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU ticks of every process on the machine, by pid, with its name.
pub fn all_cpu() -> HashMap<u32, (String, u64)> {
    let mut all = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return all;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((name, fields)) = stat_fields(pid)
            && let (Some(u), Some(s)) = (
                fields.get(11).and_then(|f| f.parse::<u64>().ok()),
                fields.get(12).and_then(|f| f.parse::<u64>().ok()),
            )
        {
            all.insert(pid, (name, u + s));
        }
    }
    all
}

/// CPU used between two snapshots by processes not in `ours`, in
/// milliseconds, with the three busiest (name, ms).
pub fn others_cpu_ms(
    before: &HashMap<u32, (String, u64)>,
    after: &HashMap<u32, (String, u64)>,
    ours: &[u32],
) -> (u64, Vec<(String, u64)>) {
    let per_tick = 1000 / ticks_per_second().max(1);
    let mut used: Vec<(String, u64)> = after
        .iter()
        .filter(|(pid, _)| !ours.contains(pid))
        .filter_map(|(pid, (name, ticks))| {
            let start = before.get(pid).map_or(0, |(_, t)| *t);
            let delta = ticks.saturating_sub(start);
            (delta > 0).then(|| (name.clone(), delta * per_tick))
        })
        .collect();
    used.sort_by_key(|u| std::cmp::Reverse(u.1));
    let total = used.iter().map(|(_, ms)| ms).sum();
    used.truncate(3);
    (total, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(cpu_ticks(pid).is_some());
        assert!(rss_bytes(pid).unwrap() > 1024 * 1024);
        assert!(all_cpu().contains_key(&pid));
    }
}
