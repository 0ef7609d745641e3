//! The step graph of a task-pack run, drawn as SVG on the server: each step a box in
//! the column of its depth (the longest chain of steps it waits for), an arrow from
//! every step to each step that needs it. The boxes say their state in words; colour
//! only repeats it. The list of steps under the drawing says the same in text.

use std::collections::HashMap;

/// Box size and gaps, in SVG user units.
const BOX_W: usize = 170;
const BOX_H: usize = 46;
const GAP_X: usize = 56;
const GAP_Y: usize = 18;
const PAD: usize = 8;
/// Longest step id drawn in full (the box's tooltip has the whole id).
const LABEL_CHARS: usize = 20;

/// A step to draw: its id, the steps it needs, and its state (`succeeded`).
pub struct StepNode<'a> {
    /// The step's id.
    pub id: &'a str,
    /// The ids of the steps it waits for.
    pub needs: &'a [String],
    /// Its state, lower case.
    pub state: &'a str,
}

/// One box of the drawing.
pub struct Node {
    /// Top-left corner.
    pub x: usize,
    /// Top-left corner.
    pub y: usize,
    /// Text x (left edge plus padding).
    pub tx: usize,
    /// Baseline of the id line.
    pub ty: usize,
    /// Baseline of the state line.
    pub sy: usize,
    /// The whole id (tooltip).
    pub id: String,
    /// The id as drawn.
    pub label: String,
    /// Its state.
    pub state: String,
}

/// The drawing: its size, boxes, and arrows as SVG path data.
pub struct Graph {
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// Boxes.
    pub nodes: Vec<Node>,
    /// Arrows, `M … C …` path data.
    pub edges: Vec<String>,
}

/// Lays out `steps` (in plan order; a need naming no step is ignored, and a cycle,
/// which a validated plan cannot have, ends at the number of steps).
pub fn layout(steps: &[StepNode<'_>]) -> Graph {
    let index: HashMap<&str, usize> = steps.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    let mut depth = vec![0usize; steps.len()];
    // Longest-path layering by relaxation: at most one pass per step.
    for _ in 0..steps.len() {
        let mut changed = false;
        for (i, step) in steps.iter().enumerate() {
            for need in step.needs {
                if let Some(&j) = index.get(need.as_str()) {
                    if depth[j] + 1 > depth[i] && depth[j] < steps.len() {
                        depth[i] = depth[j] + 1;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut row_in_column: HashMap<usize, usize> = HashMap::new();
    let mut at = vec![(0usize, 0usize); steps.len()];
    let mut nodes = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let column = depth[i];
        let row = row_in_column.entry(column).or_insert(0);
        let x = PAD + column * (BOX_W + GAP_X);
        let y = PAD + *row * (BOX_H + GAP_Y);
        *row += 1;
        at[i] = (x, y);
        let label: String = if step.id.chars().count() > LABEL_CHARS {
            let cut: String = step.id.chars().take(LABEL_CHARS - 1).collect();
            format!("{cut}…")
        } else {
            step.id.to_owned()
        };
        nodes.push(Node {
            x,
            y,
            tx: x + 10,
            ty: y + 19,
            sy: y + 37,
            id: step.id.to_owned(),
            label,
            state: step.state.to_owned(),
        });
    }
    let mut edges = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        for need in step.needs {
            if let Some(&j) = index.get(need.as_str()) {
                let (x1, y1) = (at[j].0 + BOX_W, at[j].1 + BOX_H / 2);
                let (x2, y2) = (at[i].0, at[i].1 + BOX_H / 2);
                let bend = GAP_X / 2;
                edges.push(format!(
                    "M{x1},{y1} C{},{y1} {},{y2} {},{y2}",
                    x1 + bend,
                    x2.saturating_sub(bend),
                    x2.saturating_sub(4)
                ));
            }
        }
    }
    let columns = depth.iter().copied().max().map_or(0, |d| d + 1);
    let rows = row_in_column.values().copied().max().unwrap_or(0);
    Graph {
        width: 2 * PAD + columns * BOX_W + columns.saturating_sub(1) * GAP_X,
        height: 2 * PAD + rows * BOX_H + rows.saturating_sub(1) * GAP_Y,
        nodes,
        edges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_go_in_the_column_of_their_longest_chain() {
        let none: Vec<String> = Vec::new();
        let a = vec!["build".to_owned()];
        let ab = vec!["build".to_owned(), "scan".to_owned()];
        let steps = [
            StepNode {
                id: "build",
                needs: &none,
                state: "succeeded",
            },
            StepNode {
                id: "scan",
                needs: &a,
                state: "running",
            },
            StepNode {
                id: "deploy",
                needs: &ab,
                state: "pending",
            },
            StepNode {
                id: "notify",
                needs: &a,
                state: "pending",
            },
        ];
        let graph = layout(&steps);
        let x: Vec<usize> = graph.nodes.iter().map(|n| n.x).collect();
        assert_eq!(x[0], PAD);
        assert_eq!(x[1], PAD + BOX_W + GAP_X);
        assert_eq!(
            x[2],
            PAD + 2 * (BOX_W + GAP_X),
            "deploy waits for scan, so it is after it"
        );
        assert_eq!(x[3], x[1]);
        assert_ne!(graph.nodes[3].y, graph.nodes[1].y);
        assert_eq!(graph.edges.len(), 4);
        assert_eq!(graph.width, 2 * PAD + 3 * BOX_W + 2 * GAP_X);
        assert_eq!(graph.height, 2 * PAD + 2 * BOX_H + GAP_Y);
    }

    #[test]
    fn a_cycle_or_an_unknown_need_does_not_hang_or_panic() {
        let b = vec!["b".to_owned()];
        let a = vec!["a".to_owned(), "ghost".to_owned()];
        let steps = [
            StepNode {
                id: "a",
                needs: &b,
                state: "pending",
            },
            StepNode {
                id: "b",
                needs: &a,
                state: "pending",
            },
        ];
        let graph = layout(&steps);
        assert_eq!(graph.nodes.len(), 2);
        assert_eq!(graph.edges.len(), 2);
        let long = "x".repeat(40);
        let one = [StepNode {
            id: &long,
            needs: &[],
            state: "pending",
        }];
        assert_eq!(layout(&one).nodes[0].label.chars().count(), LABEL_CHARS);
    }
}
