//! Routes: one idempotent producer per distinct path of clusters (see
//! [`crate::registry`]).
//!
//! Every batch a flow writes belongs to a route, the path its records will have been on
//! once written (origin first, the target last). Each route has its own producer id,
//! registered on the target with the path before its first batch, so that a flow
//! reading the target later knows the path from the batch header alone. Sequence
//! numbers are per producer id and partition (KIP-98), so each partition keeps one
//! counter per route; and since the broker orders only one producer's batches, a
//! partition switches routes only when nothing is in flight (see the engine's produce
//! path).

use std::collections::HashMap;

use crate::batch::provenance::Provenance;

/// A route's producer and its state.
#[derive(Debug)]
pub struct Route {
    pub path: Provenance,
    /// Producer id and epoch, once obtained and registered.
    pub producer: Option<(i64, i16)>,
    /// Generation of `producer`: stamps made under another generation are void (a
    /// broker that restarted empty may hand out the same id and epoch again).
    pub generation: u64,
    /// A producer id is being obtained and registered.
    pub requested: bool,
}

/// The routes of one flow, by index (`Pending` and partitions keep the index).
#[derive(Debug, Default)]
pub struct Routes {
    all: Vec<Route>,
    index: HashMap<Provenance, u32>,
    /// Source of generations, shared by all routes so that no two are ever equal.
    generations: u64,
}

impl Routes {
    /// The index of the route for `path`, added when new.
    pub fn intern(&mut self, path: Provenance) -> u32 {
        if let Some(&i) = self.index.get(&path) {
            return i;
        }
        let i = self.all.len() as u32;
        self.all.push(Route { path: path.clone(), producer: None, generation: 0, requested: false });
        self.index.insert(path, i);
        i
    }

    #[must_use]
    pub fn get(&self, route: u32) -> &Route {
        &self.all[route as usize]
    }

    pub fn get_mut(&mut self, route: u32) -> &mut Route {
        &mut self.all[route as usize]
    }

    /// A new producer for `route`; returns its generation.
    pub fn ready(&mut self, route: u32, producer: (i64, i16)) -> u64 {
        self.generations += 1;
        let generation = self.generations;
        let r = self.get_mut(route);
        r.producer = Some(producer);
        r.generation = generation;
        r.requested = false;
        generation
    }

    /// Forgets `route`'s producer; false when it had none.
    pub fn reset(&mut self, route: u32) -> bool {
        self.get_mut(route).producer.take().is_some()
    }

    /// Whether `route` has a producer.
    #[must_use]
    pub fn is_ready(&self, route: u32) -> bool {
        self.get(route).producer.is_some()
    }

    /// Whether no route has a producer.
    #[must_use]
    pub fn none_ready(&self) -> bool {
        self.all.iter().all(|r| r.producer.is_none())
    }
}

/// Per partition: the next sequence number of each route.
#[derive(Debug, Default, Clone)]
pub struct Sequences(Vec<i32>);

impl Sequences {
    pub fn of(&mut self, route: u32) -> &mut i32 {
        let i = route as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, 0);
        }
        &mut self.0[i]
    }

    pub fn reset(&mut self, route: u32) {
        if let Some(s) = self.0.get_mut(route as usize) {
            *s = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::provenance::ClusterId;

    fn path(ids: &[&str]) -> Provenance {
        Provenance::new(ids.iter().map(|i| ClusterId::new(i).unwrap()).collect()).unwrap()
    }

    #[test]
    fn one_route_per_path_and_generations_never_repeat() {
        let mut r = Routes::default();
        let ab = r.intern(path(&["a", "b"]));
        let cab = r.intern(path(&["c", "a", "b"]));
        assert_ne!(ab, cab);
        assert_eq!(r.intern(path(&["a", "b"])), ab);
        assert!(r.none_ready());
        let g1 = r.ready(ab, (1, 0));
        let g2 = r.ready(cab, (2, 0));
        assert!(g1 != g2 && !r.none_ready());
        assert!(r.reset(ab));
        assert!(!r.reset(ab), "reset twice");
        let g3 = r.ready(ab, (1, 0));
        assert!(g3 > g2, "the same id and epoch again is a new generation");
    }

    #[test]
    fn sequences_are_per_route() {
        let mut s = Sequences::default();
        *s.of(2) += 5;
        assert_eq!(*s.of(0), 0);
        assert_eq!(*s.of(2), 5);
        s.reset(2);
        s.reset(9);
        assert_eq!(*s.of(2), 0);
    }
}
