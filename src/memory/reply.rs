//! Reading a reply as plain text: the answer is the last `Answer:` line, the lines before it
//! the reasoning (what every strategy but the structured one does).

/// What a reply says, read by a strategy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    /// The final answer.
    pub answer: String,
    /// Reasoning steps, in order.
    pub reasoning: Vec<String>,
    /// Self-reported confidence in 0..=1, if given.
    pub confidence: Option<f32>,
    /// Why a structured reply could not be read (the answer is then the plain text).
    pub parse_error: Option<String>,
}

/// The text after an `Answer:` label at the start of a line (any case, optional markdown
/// emphasis), if the line has one.
pub fn after_answer_label(line: &str) -> Option<&str> {
    let t = line.trim().trim_start_matches(['*', '#', ' ']);
    let head = t.get(..7)?;
    head.eq_ignore_ascii_case("answer:")
        .then(|| t[7..].trim().trim_start_matches('*').trim())
}

/// Plain text: the answer is the last `Answer:` line (else the whole reply); the lines before
/// it are the reasoning steps.
pub fn plain(content: &str) -> Extracted {
    let lines: Vec<&str> = content.lines().collect();
    let labelled = lines.iter().rposition(|l| after_answer_label(l).is_some());
    match labelled {
        Some(i) => Extracted {
            answer: after_answer_label(lines[i]).unwrap_or_default().to_string(),
            reasoning: lines[..i]
                .iter()
                .map(|l| l.trim())
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            ..Extracted::default()
        },
        None => Extracted {
            answer: content.trim().to_string(),
            ..Extracted::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_replies_split_reasoning_from_the_answer_line() {
        let e = plain("17 * 20 = 340\n17 * 3 = 51\n\n**Answer:** 391");
        assert_eq!(e.answer, "391");
        assert_eq!(e.reasoning, ["17 * 20 = 340", "17 * 3 = 51"]);
        assert_eq!(plain(" just this \n").answer, "just this");
    }
}
