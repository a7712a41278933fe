//! CPU placement of the calling thread (`sched_setaffinity` of thread 0).
//!
//! Used for stages that hand work to each other synchronously, as a job
//! does between a frontend and its context's worker: they never run at the
//! same time, so confining them to one CPU loses no parallelism and turns
//! each hand-off into a wake-up on a CPU that is already awake (waking a
//! thread on an idle, halted virtual CPU costs tens of µs).

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

/// The CPUs the calling thread may run on, in increasing order.
pub fn allowed() -> rustix::io::Result<Vec<usize>> {
    let set = sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// Confines the calling thread to `cpus` (ignoring numbers past
/// `CpuSet::MAX_CPU`). An empty list is refused with `EINVAL`.
pub fn confine(cpus: &[usize]) -> rustix::io::Result<()> {
    let mut set = CpuSet::new();
    for &c in cpus.iter().filter(|&&c| c < CpuSet::MAX_CPU) {
        set.set(c);
    }
    if set.count() == 0 {
        return Err(rustix::io::Errno::INVAL);
    }
    sched_setaffinity(None, &set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_confined_and_sees_it() {
        std::thread::spawn(|| {
            let all = allowed().unwrap();
            assert!(!all.is_empty());
            let last = *all.last().unwrap();
            confine(&[last]).unwrap();
            assert_eq!(allowed().unwrap(), [last]);
            assert_eq!(rustix::thread::sched_getcpu(), last);
            assert_eq!(confine(&[]), Err(rustix::io::Errno::INVAL));
        })
        .join()
        .unwrap();
    }
}
