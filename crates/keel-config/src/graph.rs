//! Cycle finding for the phase and task graphs.
//!
//! A graph with cycles can have exponentially many of them, so one cycle is reported per strongly
//! connected component: the shortest one through the component's first node in file order. Fixing
//! it either breaks the component or leaves a smaller cycle that the next validation reports.

use std::collections::VecDeque;

/// One cycle: node indices from the first node back to it, `[a, b, a]`, and the edge label of
/// the first step (`a → b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FoundCycle<E> {
    pub path: Vec<usize>,
    pub first_edge: E,
}

/// Finds one cycle per strongly connected component. `edges[node]` lists `(target, label)` pairs
/// in file order; cycles come back ordered by their first node.
pub(crate) fn find_cycles<E: Clone>(edges: &[Vec<(usize, E)>]) -> Vec<FoundCycle<E>> {
    let components = strongly_connected_components(edges);
    let mut cycles = Vec::new();
    for component in components {
        let start = *component.iter().min().expect("components are never empty");
        let in_component = {
            let mut member = vec![false; edges.len()];
            for node in &component {
                member[*node] = true;
            }
            member
        };
        let has_self_edge = edges[start].iter().any(|(target, _)| *target == start);
        if component.len() == 1 && !has_self_edge {
            continue;
        }
        if let Some(cycle) = shortest_cycle_through(edges, start, &in_component) {
            cycles.push(cycle);
        }
    }
    cycles.sort_by_key(|cycle| cycle.path[0]);
    cycles
}

/// Breadth-first search from `start` back to itself, staying inside one component.
fn shortest_cycle_through<E: Clone>(
    edges: &[Vec<(usize, E)>],
    start: usize,
    in_component: &[bool],
) -> Option<FoundCycle<E>> {
    // `previous[node]` is the node the search reached it from; `None` means not reached yet.
    let mut previous: Vec<Option<usize>> = vec![None; edges.len()];
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for (target, _) in &edges[node] {
            if *target == start {
                let mut middle = Vec::new();
                let mut cursor = node;
                while cursor != start {
                    middle.push(cursor);
                    cursor = previous[cursor].expect("every reached node has a predecessor");
                }
                middle.reverse();
                let mut path = Vec::with_capacity(middle.len() + 2);
                path.push(start);
                path.extend(middle);
                path.push(start);
                let second = path[1];
                let first_edge = edges[start]
                    .iter()
                    .find(|(target, _)| *target == second)
                    .map(|(_, label)| label.clone())
                    .expect("the path starts with an edge of start");
                return Some(FoundCycle { path, first_edge });
            }
            if in_component[*target] && previous[*target].is_none() {
                previous[*target] = Some(node);
                queue.push_back(*target);
            }
        }
    }
    None
}

/// Tarjan's algorithm without recursion, so a long chain of tasks cannot overflow the stack.
fn strongly_connected_components<E>(edges: &[Vec<(usize, E)>]) -> Vec<Vec<usize>> {
    const UNVISITED: usize = usize::MAX;
    let count = edges.len();
    let mut index_of = vec![UNVISITED; count];
    let mut low_link = vec![0; count];
    let mut on_stack = vec![false; count];
    let mut stack = Vec::new();
    let mut components = Vec::new();
    let mut next_index = 0;
    // Each frame is a node and how many of its edges have been followed.
    let mut frames: Vec<(usize, usize)> = Vec::new();
    for root in 0..count {
        if index_of[root] != UNVISITED {
            continue;
        }
        frames.push((root, 0));
        index_of[root] = next_index;
        low_link[root] = next_index;
        next_index += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(frame) = frames.last_mut() {
            let (node, followed) = *frame;
            if let Some((target, _)) = edges[node].get(followed) {
                frame.1 += 1;
                let target = *target;
                if index_of[target] == UNVISITED {
                    index_of[target] = next_index;
                    low_link[target] = next_index;
                    next_index += 1;
                    stack.push(target);
                    on_stack[target] = true;
                    frames.push((target, 0));
                } else if on_stack[target] {
                    low_link[node] = low_link[node].min(index_of[target]);
                }
                continue;
            }
            frames.pop();
            if let Some((parent, _)) = frames.last() {
                low_link[*parent] = low_link[*parent].min(low_link[node]);
            }
            if low_link[node] == index_of[node] {
                let mut component = Vec::new();
                loop {
                    let member = stack.pop().expect("the node is on the stack");
                    on_stack[member] = false;
                    component.push(member);
                    if member == node {
                        break;
                    }
                }
                components.push(component);
            }
        }
    }
    components
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(usize, usize)], count: usize) -> Vec<Vec<(usize, (usize, usize))>> {
        let mut adjacency = vec![Vec::new(); count];
        for (from, to) in edges {
            adjacency[*from].push((*to, (*from, *to)));
        }
        adjacency
    }

    #[test]
    fn reports_one_shortest_cycle_per_component() {
        // 0 → 1 → 2 → 0 and 1 → 0 share a component; 3 ↺ is its own; 4 → 5 is acyclic.
        let edges = graph(&[(0, 1), (1, 2), (2, 0), (1, 0), (3, 3), (4, 5)], 6);
        let cycles = find_cycles(&edges);
        assert_eq!(
            cycles,
            vec![
                FoundCycle {
                    path: vec![0, 1, 0],
                    first_edge: (0, 1)
                },
                FoundCycle {
                    path: vec![3, 3],
                    first_edge: (3, 3)
                },
            ]
        );
    }

    #[test]
    fn an_acyclic_graph_has_no_cycles() {
        let edges = graph(&[(0, 1), (1, 2), (0, 2), (3, 2)], 4);
        assert!(find_cycles(&edges).is_empty());
    }

    #[test]
    fn a_long_chain_does_not_overflow_the_stack() {
        let count = 200_000;
        let chain: Vec<(usize, usize)> = (0..count - 1).map(|node| (node, node + 1)).collect();
        let mut edges = graph(&chain, count);
        edges[count - 1].push((0, (count - 1, 0)));
        let cycles = find_cycles(&edges);
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].path.len(), count + 1);
    }
}
