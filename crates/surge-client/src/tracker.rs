//! Which jobs of a run are answered: the bookkeeping behind "every row exactly once",
//! as plain data with no broker. Results arrive at least once; the first result for
//! a job id is kept and later ones are counted as duplicates and dropped.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use surge_protocol::{Inputs, JobResult};

/// One job of a run: rows `start..end` of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedJob {
    /// Job id (the AMQP `message_id`): `<run id>-<index>`.
    pub id: String,
    /// First input row.
    pub start: usize,
    /// One past the last input row.
    pub end: usize,
}

/// Splits `rows` rows into jobs of at most `rows_per_job` rows.
pub fn plan(run_id: &str, rows: usize, rows_per_job: usize) -> Vec<PlannedJob> {
    let per = rows_per_job.max(1);
    (0..rows.div_ceil(per))
        .map(|i| PlannedJob {
            id: format!("{run_id}-{i}"),
            start: i * per,
            end: ((i + 1) * per).min(rows),
        })
        .collect()
}

/// One job per size in `sizes`, covering consecutive rows.
pub fn plan_sizes(run_id: &str, sizes: impl Iterator<Item = usize>) -> Vec<PlannedJob> {
    let mut start = 0;
    sizes
        .enumerate()
        .map(|(i, n)| {
            let job = PlannedJob {
                id: format!("{run_id}-{i}"),
                start,
                end: start + n,
            };
            start += n;
            job
        })
        .collect()
}

/// Where a job stands.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    /// Not yet confirmed by the broker (never published, or published on a connection
    /// that was lost before the confirm).
    Unpublished,
    /// Published on the current connection, its confirm not yet in.
    Sent,
    /// Confirmed by the broker at this instant; awaiting its result.
    Published(Instant),
    /// Answered.
    Done(Box<JobResult>),
}

/// What happened to a result handed to [`Tracker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// First result for this job: kept.
    New,
    /// The job was already answered: dropped.
    Duplicate,
    /// No job of this run has that id (a stray message): dropped.
    Unknown,
    /// A job of this run not read yet (a resumed run collecting what the killed run
    /// left in its reply queue): held until the job is read, then kept.
    Held,
}

/// The state of every job of a run.
#[derive(Debug)]
pub struct Tracker {
    jobs: Vec<PlannedJob>,
    states: Vec<JobState>,
    by_id: HashMap<String, usize>,
    done: usize,
    rows_done: usize,
    /// Results dropped because their job was already answered.
    pub duplicates: u64,
    /// Results dropped because they belong to no job of this run.
    pub strays: u64,
    /// Jobs published again after their result did not come in time.
    pub republished: u64,
}

impl Tracker {
    /// A tracker with every job unpublished.
    pub fn new(jobs: Vec<PlannedJob>) -> Self {
        let by_id = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.id.clone(), i))
            .collect();
        let states = vec![JobState::Unpublished; jobs.len()];
        Self {
            jobs,
            states,
            by_id,
            done: 0,
            rows_done: 0,
            duplicates: 0,
            strays: 0,
            republished: 0,
        }
    }

    /// The planned jobs.
    pub fn jobs(&self) -> &[PlannedJob] {
        &self.jobs
    }

    /// The state of job `i`.
    pub fn state(&self, i: usize) -> &JobState {
        &self.states[i]
    }

    /// Marks job `i` as confirmed by the broker at `at` (unless already answered).
    pub fn published(&mut self, i: usize, at: Instant) {
        if !matches!(self.states[i], JobState::Done(_)) {
            self.states[i] = JobState::Published(at);
        }
    }

    /// Marks every job that is not answered as unpublished (after a lost connection,
    /// jobs whose publish was not confirmed must go again; confirmed ones are safe in
    /// their queue, and republishing them is harmless because results deduplicate).
    pub fn unconfirmed_to_unpublished(&mut self, confirmed: &[bool]) {
        for (i, ok) in confirmed.iter().enumerate() {
            if !ok && matches!(self.states[i], JobState::Published(_)) {
                self.states[i] = JobState::Unpublished;
            }
        }
    }

    /// Indices of jobs never confirmed.
    pub fn unpublished(&self) -> Vec<usize> {
        (0..self.jobs.len())
            .filter(|&i| matches!(self.states[i], JobState::Unpublished))
            .collect()
    }

    /// Indices of jobs confirmed longer than `timeout` ago without a result: they are
    /// due to be published again (job ids are idempotent, so this is safe).
    pub fn overdue(&self, now: Instant, timeout: Duration) -> Vec<usize> {
        (0..self.jobs.len())
            .filter(|&i| matches!(self.states[i], JobState::Published(at) if now.saturating_duration_since(at) >= timeout))
            .collect()
    }

    /// True when `job_id` is a job of this run that has no result yet: a result for
    /// it would be [`Recorded::New`].
    pub fn is_pending(&self, job_id: &str) -> bool {
        self.by_id
            .get(job_id)
            .is_some_and(|&i| !matches!(self.states[i], JobState::Done(_)))
    }

    /// Records a result.
    pub fn record(&mut self, result: JobResult) -> Recorded {
        let Some(&i) = self.by_id.get(&result.job_id) else {
            self.strays += 1;
            return Recorded::Unknown;
        };
        if matches!(self.states[i], JobState::Done(_)) {
            self.duplicates += 1;
            return Recorded::Duplicate;
        }
        self.done += 1;
        self.rows_done += self.jobs[i].end - self.jobs[i].start;
        self.states[i] = JobState::Done(Box::new(result));
        Recorded::New
    }

    /// Jobs answered.
    pub fn done(&self) -> usize {
        self.done
    }

    /// Rows whose job is answered.
    pub fn rows_done(&self) -> usize {
        self.rows_done
    }

    /// True when every job is answered.
    pub fn is_complete(&self) -> bool {
        self.done == self.jobs.len()
    }

    /// Takes the results out, in job order (`None` for unanswered jobs).
    pub fn into_results(self) -> Vec<(PlannedJob, Option<JobResult>)> {
        self.jobs
            .into_iter()
            .zip(self.states)
            .map(|(j, s)| match s {
                JobState::Done(r) => (j, Some(*r)),
                _ => (j, None),
            })
            .collect()
    }
}

/// A job of a streaming run, in the window of jobs not yet handed on.
#[derive(Debug)]
pub struct Slot<T> {
    /// Its id and rows.
    pub job: PlannedJob,
    /// What it sends (dropped once answered).
    pub inputs: Inputs,
    /// What goes with it to the output (the input rows to write back).
    pub payload: T,
    /// Where it stands.
    pub state: JobState,
}

/// The jobs of a streaming run that are read but not yet handed on in order: a
/// sliding window over [`Tracker`]'s bookkeeping, so that a run of any length holds
/// only the jobs in flight. Job `i` has id `<run id>-<i>`; a result for a job already
/// handed on is known by its index to be a duplicate, with nothing kept per job.
#[derive(Debug)]
pub struct Window<T> {
    run_id: String,
    base: usize,
    slots: VecDeque<Slot<T>>,
    next_row: usize,
    done_in_window: usize,
    rows_done: usize,
    /// Results dropped because their job was already answered.
    pub duplicates: u64,
    /// Results dropped because they belong to no job of this run.
    pub strays: u64,
    /// Jobs published again after their result did not come in time.
    pub republished: u64,
    /// Results for jobs not read yet, by job index (see [`Window::hold_until`]).
    held: std::collections::BTreeMap<usize, JobResult>,
    /// Results for jobs below this index and not read yet are held, not dropped.
    hold_below: usize,
    /// Jobs read whose result was already held: never published by this run.
    pub collected: u64,
}

impl<T> Window<T> {
    /// An empty window for run `run_id`.
    pub fn new(run_id: &str) -> Self {
        Self {
            run_id: run_id.to_string(),
            base: 0,
            slots: VecDeque::new(),
            next_row: 0,
            done_in_window: 0,
            rows_done: 0,
            duplicates: 0,
            strays: 0,
            republished: 0,
            held: std::collections::BTreeMap::new(),
            hold_below: 0,
            collected: 0,
        }
    }

    /// Holds results for jobs not read yet, up to job index `end` (exclusive): a
    /// resumed run gets the killed run's results before it reads those jobs again, and
    /// must not publish them a second time. Bounded by what the killed run had in
    /// flight; results past `end` are strays.
    pub fn hold_until(&mut self, end: usize) {
        self.hold_below = end;
    }

    /// Results held for jobs not read yet.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// An empty window whose first job is job `jobs`, starting at row `rows`: a run
    /// resumed after its first `jobs` jobs were written.
    pub fn starting_at(run_id: &str, jobs: usize, rows: usize) -> Self {
        let mut w = Self::new(run_id);
        w.base = jobs;
        w.next_row = rows;
        w.rows_done = rows;
        w
    }

    /// Adds the next job (unpublished); returns its index.
    pub fn push(&mut self, inputs: Inputs, payload: T) -> usize {
        let i = self.base + self.slots.len();
        let n = inputs.len();
        self.slots.push_back(Slot {
            job: PlannedJob {
                id: format!("{}-{i}", self.run_id),
                start: self.next_row,
                end: self.next_row + n,
            },
            inputs,
            payload,
            state: JobState::Unpublished,
        });
        self.next_row += n;
        if let Some(r) = self.held.remove(&i) {
            self.collected += 1;
            self.record(r);
        }
        i
    }

    /// Jobs in the window (read, not yet handed on).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no job is in the window.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Jobs pushed so far.
    pub fn pushed(&self) -> usize {
        self.base + self.slots.len()
    }

    /// Rows of the jobs pushed so far.
    pub fn pushed_rows(&self) -> usize {
        self.next_row
    }

    /// Jobs answered so far (handed on or in the window).
    pub fn done(&self) -> usize {
        self.base + self.done_in_window
    }

    /// Rows whose job is answered.
    pub fn rows_done(&self) -> usize {
        self.rows_done
    }

    /// Job `i`, if it is in the window.
    pub fn slot(&self, i: usize) -> Option<&Slot<T>> {
        i.checked_sub(self.base).and_then(|k| self.slots.get(k))
    }

    /// Marks job `i` as confirmed by the broker at `at` (unless already answered).
    pub fn published(&mut self, i: usize, at: Instant) {
        self.set_state(
            i,
            |s| !matches!(s, JobState::Done(_)),
            JobState::Published(at),
        );
    }

    /// Marks job `i` as published and awaiting its confirm (unless already answered).
    pub fn sent(&mut self, i: usize) {
        self.set_state(i, |s| !matches!(s, JobState::Done(_)), JobState::Sent);
    }

    /// Marks job `i`, sent and refused by the broker (nacked), as unpublished: it goes
    /// again on the next tick.
    pub fn refused(&mut self, i: usize) {
        self.set_state(i, |s| matches!(s, JobState::Sent), JobState::Unpublished);
    }

    /// Marks every job whose confirm was still awaited as unpublished: after a lost
    /// connection it must go again (republishing a job that did arrive is harmless:
    /// results deduplicate).
    pub fn sent_to_unpublished(&mut self) {
        for s in &mut self.slots {
            if matches!(s.state, JobState::Sent) {
                s.state = JobState::Unpublished;
            }
        }
    }

    fn set_state(&mut self, i: usize, when: impl Fn(&JobState) -> bool, to: JobState) {
        if let Some(s) = i.checked_sub(self.base).and_then(|k| self.slots.get_mut(k)) {
            if when(&s.state) {
                s.state = to;
            }
        }
    }

    /// Indices of the window's jobs never confirmed.
    pub fn unpublished(&self) -> Vec<usize> {
        self.filter(|s| matches!(s, JobState::Unpublished))
    }

    /// Indices of the window's jobs confirmed longer than `timeout` ago without a result.
    pub fn overdue(&self, now: Instant, timeout: Duration) -> Vec<usize> {
        self.filter(|s| matches!(s, JobState::Published(at) if now.saturating_duration_since(*at) >= timeout))
    }

    fn filter(&self, f: impl Fn(&JobState) -> bool) -> Vec<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| f(&s.state))
            .map(|(k, _)| self.base + k)
            .collect()
    }

    /// The index of `job_id` when it names a job of this run (handed on or not).
    fn index_of(&self, job_id: &str) -> Option<usize> {
        job_id
            .strip_prefix(self.run_id.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()
    }

    /// True when `job_id` is a job in the window with no result yet.
    pub fn is_pending(&self, job_id: &str) -> bool {
        self.index_of(job_id)
            .and_then(|i| self.slot(i))
            .is_some_and(|s| !matches!(s.state, JobState::Done(_)))
    }

    /// Records a result: the first for a job is kept, later ones are duplicates.
    pub fn record(&mut self, result: JobResult) -> Recorded {
        let Some(i) = self.index_of(&result.job_id) else {
            self.strays += 1;
            return Recorded::Unknown;
        };
        if i < self.base {
            self.duplicates += 1;
            return Recorded::Duplicate;
        }
        let Some(s) = self.slots.get_mut(i - self.base) else {
            if i < self.hold_below {
                if self.held.contains_key(&i) {
                    self.duplicates += 1;
                    return Recorded::Duplicate;
                }
                self.held.insert(i, result);
                return Recorded::Held;
            }
            self.strays += 1;
            return Recorded::Unknown;
        };
        if matches!(s.state, JobState::Done(_)) {
            self.duplicates += 1;
            return Recorded::Duplicate;
        }
        self.rows_done += s.job.end - s.job.start;
        self.done_in_window += 1;
        s.inputs = Inputs::Texts(Vec::new());
        s.state = JobState::Done(Box::new(result));
        Recorded::New
    }

    /// True when the first `k` jobs of the window are all answered.
    pub fn done_at_front(&self, k: usize) -> bool {
        self.slots.len() >= k
            && self
                .slots
                .iter()
                .take(k)
                .all(|s| matches!(s.state, JobState::Done(_)))
    }

    /// Takes out the first job of the window once it is answered: jobs leave in
    /// order, so the output can be written as soon as its prefix is complete.
    pub fn pop_done(&mut self) -> Option<(PlannedJob, T, JobResult)> {
        if !matches!(self.slots.front()?.state, JobState::Done(_)) {
            return None;
        }
        let s = self.slots.pop_front()?;
        self.base += 1;
        self.done_in_window -= 1;
        match s.state {
            JobState::Done(r) => Some((s.job, s.payload, *r)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use surge_protocol::ErrorKind;

    use super::*;

    fn result(id: &str) -> JobResult {
        JobResult::failure(id, "m", ErrorKind::Internal, "x", "w")
    }

    #[test]
    fn plan_covers_every_row_once() {
        let p = plan("r", 10, 4);
        assert_eq!(
            p.iter().map(|j| (j.start, j.end)).collect::<Vec<_>>(),
            vec![(0, 4), (4, 8), (8, 10)]
        );
        assert_eq!(p[2].id, "r-2");
        assert!(plan("r", 0, 4).is_empty());
        assert_eq!(plan("r", 3, 0).len(), 3);
    }

    #[test]
    fn duplicates_and_strays_are_dropped() {
        let mut t = Tracker::new(plan("r", 4, 2));
        assert!(t.is_pending("r-0") && !t.is_pending("other-0"));
        assert_eq!(t.record(result("r-0")), Recorded::New);
        assert!(!t.is_pending("r-0"));
        assert_eq!(t.record(result("r-0")), Recorded::Duplicate);
        assert_eq!(t.record(result("other-0")), Recorded::Unknown);
        assert!(!t.is_complete());
        assert_eq!(t.record(result("r-1")), Recorded::New);
        assert!(t.is_complete());
        assert_eq!((t.duplicates, t.strays, t.rows_done()), (1, 1, 4));
    }

    #[test]
    fn overdue_jobs_are_found_and_answered_ones_never_are() {
        let mut t = Tracker::new(plan("r", 3, 1));
        let t0 = Instant::now();
        t.published(0, t0);
        t.published(1, t0);
        t.record(result("r-1"));
        t.published(1, t0); // a late confirm must not reopen an answered job
        let later = t0 + Duration::from_secs(10);
        assert_eq!(t.overdue(later, Duration::from_secs(5)), vec![0]);
        assert_eq!(t.overdue(t0, Duration::from_secs(5)), Vec::<usize>::new());
        assert_eq!(t.unpublished(), vec![2]);
    }

    #[test]
    fn a_resumed_window_holds_results_for_jobs_not_read_yet_and_never_publishes_them() {
        let mut w: Window<()> = Window::starting_at("r", 2, 20);
        w.hold_until(6);
        assert_eq!(w.record(result("r-3")), Recorded::Held);
        assert_eq!(w.record(result("r-3")), Recorded::Duplicate);
        assert_eq!(
            w.record(result("r-9")),
            Recorded::Unknown,
            "past what was in flight"
        );
        assert_eq!(
            w.record(result("r-1")),
            Recorded::Duplicate,
            "already written"
        );
        assert_eq!(w.held(), 1);
        let a = w.push(Inputs::rows(&vec![vec![1.0]; 10]), ());
        let b = w.push(Inputs::rows(&vec![vec![1.0]; 10]), ());
        assert_eq!((a, b), (2, 3));
        assert_eq!(w.unpublished(), vec![2], "job 3 is answered already");
        assert_eq!((w.collected, w.held(), w.rows_done()), (1, 0, 30));
        assert_eq!(w.record(result("r-2")), Recorded::New);
        assert!(w.pop_done().is_some() && w.pop_done().is_some());
        assert!(w.is_empty());
    }

    #[test]
    fn the_window_hands_jobs_on_in_order_and_knows_old_ids_as_duplicates() {
        let mut w: Window<u32> = Window::new("r");
        for k in 0..3 {
            w.push(Inputs::rows(&[vec![1.0], vec![2.0]]), k);
        }
        assert_eq!(w.unpublished(), vec![0, 1, 2]);
        let t0 = Instant::now();
        w.published(0, t0);
        w.published(1, t0);
        assert_eq!(w.record(result("r-1")), Recorded::New);
        assert!(w.pop_done().is_none(), "job 0 is not answered yet");
        assert_eq!(w.record(result("r-0")), Recorded::New);
        let (job, payload, _) = w.pop_done().unwrap();
        assert_eq!(
            (job.id.as_str(), job.start, job.end, payload),
            ("r-0", 0, 2, 0)
        );
        assert_eq!(w.pop_done().unwrap().1, 1);
        assert!(w.pop_done().is_none());
        assert_eq!(w.record(result("r-0")), Recorded::Duplicate);
        assert_eq!(w.record(result("r-1")), Recorded::Duplicate);
        assert_eq!(w.record(result("r-9")), Recorded::Unknown);
        assert_eq!(w.record(result("other-2")), Recorded::Unknown);
        assert!(w.is_pending("r-2") && !w.is_pending("r-0"));
        assert_eq!((w.done(), w.pushed(), w.len(), w.rows_done()), (2, 3, 1, 4));
        assert_eq!(
            w.overdue(t0 + Duration::from_secs(9), Duration::from_secs(5)),
            Vec::<usize>::new()
        );
        w.published(2, t0);
        assert_eq!(
            w.overdue(t0 + Duration::from_secs(9), Duration::from_secs(5)),
            vec![2]
        );
    }

    #[test]
    fn a_sent_job_is_neither_republished_nor_overdue_until_its_confirm_or_a_lost_session() {
        use surge_protocol::Rows;
        let rows = || Inputs::Rows(Rows::from_flat(vec![1.0], 1));
        let mut w: Window<()> = Window::new("r");
        let (a, b, c) = (w.push(rows(), ()), w.push(rows(), ()), w.push(rows(), ()));
        for i in [a, b, c] {
            w.sent(i);
        }
        let long_ago = Instant::now();
        let later = long_ago + Duration::from_secs(3600);
        assert!(
            w.unpublished().is_empty(),
            "sent jobs are not published again"
        );
        assert!(w.overdue(later, Duration::from_secs(1)).is_empty());
        // a is confirmed, b refused (nacked), c's confirm is lost with its session.
        w.published(a, long_ago);
        w.refused(b);
        assert_eq!(w.unpublished(), vec![b], "a refused job goes again");
        assert_eq!(w.overdue(later, Duration::from_secs(1)), vec![a]);
        w.sent_to_unpublished();
        assert_eq!(w.unpublished(), vec![b, c]);
        // A result may come before its confirm: the job is answered, and the late
        // confirm changes nothing.
        w.sent(b);
        assert_eq!(w.record(result("r-1")), Recorded::New);
        w.published(b, later);
        w.refused(b);
        assert!(matches!(
            w.slot(b).map(|s| &s.state),
            Some(JobState::Done(_))
        ));
    }
}
