"""The engine: how a run goes. Proposer layers (`layers`), the final answer (`final`, with
`staircase` streaming), the synthesis prompt (`prompts`), and the result (`result`), driven by
`pipeline.MoA` (exported as `mixkit.moa.MoA`)."""
