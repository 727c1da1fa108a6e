//! Which waiting steps run together (pure: no threads, no clocks).
//!
//! Continuous batching at a hop: when a compute worker is free it takes the oldest waiting
//! step and, with it, the next steps in arrival order that run on the same shard, until
//! their rows fill the batch's row budget. A step that would overflow the budget ends the
//! batch there (it leads the next one), so a later small step never overtakes it: order
//! stays first come, first served, and a long prefill waits for no more than one batch.
//! Work that is not a step (and steps of another shard) keeps its place in the queue.

/// What the batcher knows of one waiting item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// A step of `rows` rows on the shard identified by `shard`.
    Step { shard: usize, rows: usize },
    /// Anything else: runs alone.
    Other,
}

/// The queue positions (ascending) of the items the next batch takes from `queue`, led
/// by `queue[0]`, with at most `budget` rows in all (the leader is always taken, however
/// many rows it has). Empty for an empty queue.
pub fn pick(queue: &[Waiting], budget: usize) -> Vec<usize> {
    let Some(first) = queue.first() else {
        return Vec::new();
    };
    let Waiting::Step { shard, rows } = *first else {
        return vec![0];
    };
    let mut taken = vec![0];
    let mut total = rows;
    for (i, w) in queue.iter().enumerate().skip(1) {
        match *w {
            Waiting::Step { shard: s, rows: r } if s == shard => {
                if total + r > budget {
                    break;
                }
                total += r;
                taken.push(i);
            }
            _ => {}
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(shard: usize, rows: usize) -> Waiting {
        Waiting::Step { shard, rows }
    }

    #[test]
    fn decode_steps_of_one_shard_go_together_up_to_the_budget() {
        let q = vec![step(1, 1); 20];
        assert_eq!(pick(&q, 16), (0..16).collect::<Vec<_>>());
        assert_eq!(pick(&q, 512).len(), 20);
        assert!(pick(&[], 16).is_empty());
    }

    #[test]
    fn other_work_and_other_shards_keep_their_place_and_are_skipped() {
        let q = [
            step(1, 1),
            Waiting::Other,
            step(2, 1),
            step(1, 3),
            step(1, 1),
        ];
        assert_eq!(pick(&q, 512), vec![0, 3, 4]);
        assert_eq!(pick(&[Waiting::Other, step(1, 1)], 512), vec![0]);
    }

    #[test]
    fn a_step_that_would_overflow_ends_the_batch_and_leads_the_next() {
        // A 500-row prefill chunk after two decode steps: it does not fit, and the decode
        // step behind it does not overtake it.
        let q = [step(1, 1), step(1, 1), step(1, 500), step(1, 1)];
        assert_eq!(pick(&q, 256), vec![0, 1]);
        assert_eq!(
            pick(&q[2..], 256),
            vec![0],
            "an oversized leader runs alone"
        );
        assert_eq!(pick(&q[2..], 512), vec![0, 1]);
    }

    #[test]
    fn no_batch_exceeds_the_budget_and_no_step_overtakes_an_older_one_of_its_shard() {
        // Drain a queue batch by batch, as the workers do.
        let rows = [3usize, 1, 7, 200, 1, 1, 64, 2, 300, 5, 1, 9];
        let mut q: Vec<(usize, Waiting)> = rows
            .iter()
            .enumerate()
            .map(|(i, &r)| (i, step(i % 2, r)))
            .collect();
        let mut batch_of = vec![usize::MAX; rows.len()];
        let mut batch = 0;
        while !q.is_empty() {
            let w: Vec<Waiting> = q.iter().map(|(_, w)| *w).collect();
            let idx = pick(&w, 64);
            let total: usize = idx.iter().map(|&i| rows[q[i].0]).sum();
            assert!(total <= 64 || idx.len() == 1, "{idx:?} holds {total} rows");
            for &i in idx.iter().rev() {
                let (item, _) = q.remove(i);
                assert_eq!(batch_of[item], usize::MAX, "served once");
                batch_of[item] = batch;
            }
            batch += 1;
        }
        assert!(batch_of.iter().all(|&b| b != usize::MAX), "all served");
        for i in 0..rows.len() {
            for j in (i + 2..rows.len()).step_by(2) {
                assert!(
                    batch_of[i] <= batch_of[j],
                    "step {j} ran in batch {} before step {i} (batch {})",
                    batch_of[j],
                    batch_of[i]
                );
            }
        }
        assert!(batch < rows.len(), "some steps shared a batch");
    }
}
