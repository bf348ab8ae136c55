//! The CPU scheduling policy of the server's threads.
//!
//! Linux's default policy (`SCHED_OTHER`) lets a thread that wakes up preempt the thread
//! running on that CPU. A mail server's threads wake thousands of times a second (a command
//! arrived, a commit is done), and each wake-up used to push aside whatever ran there,
//! often the very client or thread that had just handed over the work, so everyone ran in
//! slices with a context switch between them. Under `SCHED_BATCH` a woken thread waits for
//! the running one's slice or for an idle CPU instead; it gets the same share of the CPU
//! (the nice value is kept), only without wake-up preemption.
//!
//! Measured with `bench/smtp/run` on the 2-core benchmark machine: messages per second at
//! 1 / 20 / 50 sessions went from about 1,440 / 4,330 / 5,060 to 1,490 / 5,160 / 6,040, with
//! 20 % less server CPU per message. The cost is latency under saturation only: on a busy
//! machine a woken thread may wait up to one scheduler slice (a few milliseconds), which a
//! mail protocol does not notice. An idle CPU still takes it at once.
//!
//! A process sets its policy before it starts its threads: threads inherit their creator's.

use std::fmt;

/// Which policy the server's threads run under (`cpu_scheduling` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuScheduling {
    /// `SCHED_BATCH`: no wake-up preemption (the default).
    #[default]
    Batch,
    /// Left as the process was started (normally `SCHED_OTHER`).
    Normal,
}

impl CpuScheduling {
    /// Parses the configuration's value: `"batch"` or `"normal"`.
    pub fn parse(s: &str) -> Option<CpuScheduling> {
        match s {
            "batch" => Some(CpuScheduling::Batch),
            "normal" => Some(CpuScheduling::Normal),
            _ => None,
        }
    }

    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuScheduling::Batch => "batch",
            CpuScheduling::Normal => "normal",
        }
    }

    /// Applies the policy to the calling thread, and so to every thread it creates
    /// afterwards: call it first thing in `main`, before any runtime or thread exists.
    /// `Normal` changes nothing.
    pub fn apply(self) -> Result<(), SchedError> {
        match self {
            CpuScheduling::Normal => Ok(()),
            CpuScheduling::Batch => batch(),
        }
    }
}

/// A multi-threaded tokio runtime (all drivers on) whose threads, and every thread they
/// start, run under `scheduling`: the policy is applied to the calling thread first. A
/// policy that cannot be applied is a warning on stderr, not an error: the server works
/// under the default one, only with more context switches under load.
pub fn server_runtime(scheduling: CpuScheduling) -> std::io::Result<tokio::runtime::Runtime> {
    if let Err(e) = scheduling.apply() {
        eprintln!("warning: {e}; set cpu_scheduling = \"normal\" to silence this");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Why the policy could not be applied (the server runs on under the default one).
#[derive(Debug)]
pub struct SchedError(String);

impl fmt::Display for SchedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot switch to SCHED_BATCH: {}", self.0)
    }
}

impl std::error::Error for SchedError {}

#[cfg(target_os = "linux")]
fn batch() -> Result<(), SchedError> {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    // The library sets the nice value along with the policy, from a 0..=99 scale: the value
    // that maps to the thread's present nice is passed, and checked afterwards, so an
    // operator's `Nice=` stays as it was.
    let nice = current_nice()?;
    let level = (0..=99u8)
        .find(|&p| nice_of_level(p) == nice)
        .ok_or_else(|| SchedError(format!("no priority level for nice {nice}")))?;
    let priority = ThreadPriorityValue::try_from(level).map_err(SchedError)?;
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(priority),
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
    )
    .map_err(|e| SchedError(format!("{e:?}")))?;
    let after = current_nice()?;
    if after != nice {
        return Err(SchedError(format!(
            "the nice value moved from {nice} to {after}"
        )));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn batch() -> Result<(), SchedError> {
    Err(SchedError("only on Linux".into()))
}

/// The nice value `thread_priority` sets for level `p` of its 0..=99 scale (99 is nice -20,
/// 0 is nice 19).
#[cfg(target_os = "linux")]
fn nice_of_level(p: u8) -> i32 {
    let ratio = 1.0 - f32::from(p) / 99.0;
    // Truncated toward zero, as the library does (an `as i8` cast of a value in 0..=39).
    (39.0 * ratio).trunc() as i32 - 20
}

/// The calling thread's nice value, field 19 of `/proc/thread-self/stat`.
#[cfg(target_os = "linux")]
fn current_nice() -> Result<i32, SchedError> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")
        .map_err(|e| SchedError(format!("/proc/thread-self/stat: {e}")))?;
    parse_nice(&stat).ok_or_else(|| SchedError("unexpected /proc/thread-self/stat".into()))
}

/// Field 19 of a `/proc/…/stat` line. The command name (field 2, in parentheses) may hold
/// spaces and parentheses itself, so fields are counted from the last `)`.
fn parse_nice(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts with field 3 (the state): field 19 is the 17th.
    rest.split_whitespace().nth(16)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_is_field_nineteen_counted_after_the_command_name() {
        let line = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 -5 4 0 \
                    123 456 789";
        assert_eq!(parse_nice(line), Some(-5));
        assert_eq!(parse_nice("1 (x) S 1 2"), None);
        assert_eq!(CpuScheduling::parse("batch"), Some(CpuScheduling::Batch));
        assert_eq!(CpuScheduling::parse("normal"), Some(CpuScheduling::Normal));
        assert_eq!(CpuScheduling::parse("fifo"), None);
    }

    /// Every nice value has a level on the library's scale, so none is refused for want of
    /// one.
    #[cfg(target_os = "linux")]
    #[test]
    fn every_nice_value_has_a_level() {
        for nice in -20..=19 {
            assert!(
                (0..=99u8).any(|p| nice_of_level(p) == nice),
                "no level for nice {nice}"
            );
        }
    }

    /// In a thread of its own (the policy is per thread and inherited): the thread ends up
    /// under SCHED_BATCH with its nice value unchanged, and a thread it starts inherits both.
    #[cfg(target_os = "linux")]
    #[test]
    fn batch_keeps_the_nice_value_and_is_inherited() {
        std::thread::spawn(|| {
            let nice = current_nice().expect("nice");
            CpuScheduling::Batch.apply().expect("apply");
            assert_eq!(current_nice().expect("nice"), nice);
            let policy = |stat: &str| -> Option<u32> {
                // Field 41: the scheduling policy (3 is SCHED_BATCH).
                stat.rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(38)?
                    .parse()
                    .ok()
            };
            let own = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
            assert_eq!(policy(&own), Some(3), "SCHED_BATCH");
            let child = std::thread::spawn(move || {
                std::fs::read_to_string("/proc/thread-self/stat").expect("stat")
            })
            .join()
            .expect("child");
            assert_eq!(policy(&child), Some(3), "inherited");
        })
        .join()
        .expect("thread");
    }
}
