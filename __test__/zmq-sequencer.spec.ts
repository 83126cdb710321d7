// The ZeroMQ source's sequencing rules (SPEC 2.1) on the sequencer alone: no sockets, no timers. Each case
// names the rule it covers and lists, step by step, the events fed in and the actions expected back, in
// order. Payloads are opaque to the sequencer (the header is given with them), so they are short labels
// `endpoint:rank:seq` that show which message an ingest carries.
import test from 'ava'
import { parseReply } from '../ts/transport/sources/replay.js'
import { type BatchHeader, Sequencer, type SequencerAction, type SequencerOptions } from '../ts/transport/sources/sequencer.js'

// ---------------------------------------------------------------------------------------------------
// events

interface LiveOpts {
  ep?: number
  rank?: number
  /** vLLM publisher id (any string; 16 bytes on the wire, opaque here). */
  pid?: string
  topic?: string
  malformed?: boolean
}

type Step =
  | { kind: 'live'; seq: bigint; o: LiveOpts }
  | { kind: 'reply'; replay: number; seq: bigint; o: LiveOpts }
  | { kind: 'end' | 'silent'; replay: number }
  | { kind: 'disconnect' | 'reconnect'; ep: number }

const live = (seq: number | bigint, o: LiveOpts = {}): Step => ({ kind: 'live', seq: BigInt(seq), o })
const reply = (replay: number, seq: number | bigint, o: LiveOpts = {}): Step => ({ kind: 'reply', replay, seq: BigInt(seq), o })
const end = (replay: number): Step => ({ kind: 'end', replay })
const silent = (replay: number): Step => ({ kind: 'silent', replay })
const disconnect = (ep = 0): Step => ({ kind: 'disconnect', ep })
const reconnect = (ep = 0): Step => ({ kind: 'reconnect', ep })

const label = (ep: number, rank: number, seq: bigint) => `${ep}:${rank}:${seq}`

function message(step: { seq: bigint; o: LiveOpts }): { header: BatchHeader | null; payload: Buffer } {
  const { ep = 0, rank = 0, pid, malformed } = step.o
  const payload = Buffer.from(label(ep, rank, step.seq))
  if (malformed) return { header: null, payload }
  return { header: { dpRank: rank, publisherId: pid === undefined ? null : Buffer.from(pid) }, payload }
}

function feed(s: Sequencer, step: Step): string[] {
  switch (step.kind) {
    case 'live': {
      const { header, payload } = message(step)
      return s.live(step.o.ep ?? 0, Buffer.from(step.o.topic ?? 'kv', 'latin1'), step.seq, header, payload).map(show)
    }
    case 'reply': {
      const { header, payload } = message(step)
      const r = s.replayed(step.replay, step.seq, header, payload)
      return [...r.actions.map(show), `→ ${r.verdict}`]
    }
    case 'end':
      return s.replayEnded(step.replay, 'end').map(show)
    case 'silent':
      return s.replayEnded(step.replay, 'silent').map(show)
    case 'disconnect':
      return s.disconnected(step.ep).map(show)
    case 'reconnect':
      return s.reconnected(step.ep).map(show)
  }
}

/** One action as a short line; an ingest whose payload is not its own stream's seq shows the payload. */
function show(a: SequencerAction): string {
  const at = `${a.endpoint}:${a.dpRank ?? '-'}`
  switch (a.type) {
    case 'ingest': {
      const text = Buffer.from(a.payload).toString()
      const own = text === label(a.endpoint, a.dpRank, a.seq) ? '' : ` [${text}]`
      return `${a.replayed ? 'recover' : 'ingest'} ${at} ${a.seq}${own}`
    }
    case 'reset':
      return `reset ${at}`
    case 'replay':
      return `replay#${a.replay} ${at} from ${a.from} ${a.kind}`
    case 'cancel_replay':
      return `cancel#${a.replay} ${at}`
    case 'lost':
      return `lost ${at} ${a.count} (${a.why})`
    case 'drop':
      return `drop ${a.reason} ${at} ${a.seq}`
    case 'duplicate':
      return `dup ${at} ${a.seq}`
    case 'gap':
      return `gap ${at} ${a.from}..${a.to}${a.replaying ? ' replaying' : ''}`
    case 'restart':
      return `restart ${at} ${a.why}`
    case 'overflow':
      return `overflow ${at} ${a.seq}`
    case 'replay_timeout':
      return `timeout#${a.replay} ${at} from ${a.from}`
    case 'replay_stall':
      return `stall#${a.replay} ${at} from ${a.from}`
  }
}

// ---------------------------------------------------------------------------------------------------
// cases

interface Case {
  rule: string
  opts?: Partial<Omit<SequencerOptions, 'endpoints'>> & { replay?: boolean; endpoints?: number }
  steps: [Step, string[]][]
}

/** First contact of stream 0:0 on an endpoint with replay: replay#1 brings seq 0, the live copy is a duplicate. */
const WARM: [Step, string[]][] = [
  [live(0), ['replay#1 0:0 from 0 initial']],
  [reply(1, 0), ['recover 0:0 0', '→ applied']],
  [end(1), ['dup 0:0 0']],
]

const cases: Case[] = [
  // first contact
  {
    rule: 'first contact without a replay endpoint: the first message is the start, whatever its seq',
    steps: [
      [live(5), ['ingest 0:0 5']],
      [live(6), ['ingest 0:0 6']],
    ],
  },
  {
    rule: 'first contact with a replay endpoint: replay from seq 0; the live message is held, its copy from the replay applied once',
    opts: { replay: true },
    steps: [
      [live(3), ['replay#1 0:0 from 0 initial']],
      [reply(1, 0), ['recover 0:0 0', '→ applied']],
      [reply(1, 1), ['recover 0:0 1', '→ applied']],
      [reply(1, 2), ['recover 0:0 2', '→ applied']],
      [reply(1, 3), ['recover 0:0 3', '→ applied']],
      [end(1), ['dup 0:0 3']],
      [live(4), ['ingest 0:0 4']],
    ],
  },
  {
    rule: "first contact: a replay starting after 0 (the engine's buffer rolled over) starts the stream there, nothing lost",
    opts: { replay: true },
    steps: [
      [live(7), ['replay#1 0:0 from 0 initial']],
      [reply(1, 5), ['recover 0:0 5', '→ applied']],
      [reply(1, 6), ['recover 0:0 6', '→ applied']],
      [end(1), ['ingest 0:0 7']],
    ],
  },
  {
    rule: 'first contact: held live messages older than the first reply are the start; the seq between them and the reply is lost',
    opts: { replay: true },
    steps: [
      [live(3), ['replay#1 0:0 from 0 initial']],
      [live(4), []],
      [reply(1, 6), ['ingest 0:0 3', 'ingest 0:0 4', 'lost 0:0 1 (replay started after the requested seq)', 'recover 0:0 6', '→ applied']],
      [end(1), []],
    ],
  },
  {
    rule: 'first contact: a replay timeout makes the first held live message the start; nothing is counted lost',
    opts: { replay: true },
    steps: [
      [live(3), ['replay#1 0:0 from 0 initial']],
      [live(4), []],
      [silent(1), ['timeout#1 0:0 from 0', 'ingest 0:0 3', 'ingest 0:0 4']],
      [live(5), ['ingest 0:0 5']],
    ],
  },

  // in order, gaps
  {
    rule: 'in order: each next seq is applied; seqs are u64 (no precision lost above 2^53)',
    steps: [
      [live(2n ** 53n + 1n), [`ingest 0:0 ${2n ** 53n + 1n}`]],
      [live(2n ** 53n + 2n), [`ingest 0:0 ${2n ** 53n + 2n}`]],
      [
        live(2n ** 64n - 2n),
        [
          `gap 0:0 ${2n ** 53n + 3n}..${2n ** 64n - 3n}`,
          `lost 0:0 ${2n ** 64n - 2n ** 53n - 5n} (gap without a replay endpoint)`,
          `ingest 0:0 ${2n ** 64n - 2n}`,
        ],
      ],
    ],
  },
  {
    rule: "gap without a replay endpoint (onLoss 'keep'): the missing seqs are lost, the stream goes on",
    steps: [
      [live(0), ['ingest 0:0 0']],
      [live(1), ['ingest 0:0 1']],
      [live(4), ['gap 0:0 2..3', 'lost 0:0 2 (gap without a replay endpoint)', 'ingest 0:0 4']],
      [live(5), ['ingest 0:0 5']],
    ],
  },
  {
    rule: "gap without a replay endpoint (onLoss 'reset'): lost, and the rank is reset before going on",
    opts: { onLoss: 'reset' },
    steps: [
      [live(0), ['ingest 0:0 0']],
      [live(1), ['ingest 0:0 1']],
      [live(4), ['gap 0:0 2..3', 'lost 0:0 2 (gap without a replay endpoint)', 'reset 0:0', 'ingest 0:0 4']],
    ],
  },
  {
    rule: 'gap with a replay endpoint: live messages are held while the replay runs and merged with the replies in seq order',
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(1), ['ingest 0:0 1']],
      [live(4), ['gap 0:0 2..3 replaying', 'replay#2 0:0 from 2 gap']],
      [live(5), []],
      [reply(2, 2), ['recover 0:0 2', '→ applied']],
      [reply(2, 3), ['recover 0:0 3', '→ applied']],
      [reply(2, 4), ['recover 0:0 4', '→ applied']],
      [reply(2, 5), ['dup 0:0 4', 'recover 0:0 5', '→ applied']],
      [end(2), ['dup 0:0 5']],
      [live(6), ['ingest 0:0 6']],
    ],
  },
  {
    rule: 'duplicates: live copies of replayed batches arriving after the replay are skipped, not taken for a restart',
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(3), ['gap 0:0 1..2 replaying', 'replay#2 0:0 from 1 gap']],
      [reply(2, 1), ['recover 0:0 1', '→ applied']],
      [reply(2, 2), ['recover 0:0 2', '→ applied']],
      [reply(2, 3), ['recover 0:0 3', '→ applied']],
      [reply(2, 4), ['dup 0:0 3', 'recover 0:0 4', '→ applied']],
      [reply(2, 5), ['recover 0:0 5', '→ applied']],
      [end(2), []],
      [live(4), ['dup 0:0 4']],
      [live(5), ['dup 0:0 5']],
      [live(6), ['ingest 0:0 6']],
    ],
  },
  {
    rule: 'a second gap during a replay is queued behind it: one replay, another round from the second gap',
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(3), ['gap 0:0 1..2 replaying', 'replay#2 0:0 from 1 gap']],
      [live(5), []],
      [reply(2, 1), ['recover 0:0 1', '→ applied']],
      [reply(2, 2), ['recover 0:0 2', '→ applied']],
      [reply(2, 3), ['recover 0:0 3', '→ applied']],
      [end(2), ['dup 0:0 3', 'replay#2 0:0 from 4 gap']],
      [reply(2, 4), ['recover 0:0 4', '→ applied']],
      [reply(2, 5), ['recover 0:0 5', '→ applied']],
      [end(2), ['dup 0:0 5']],
    ],
  },

  // replays that do not bring everything
  {
    rule: "replay started late (the engine's buffer rolled over), onLoss 'keep': what it skipped is lost",
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(1), ['ingest 0:0 1']],
      [live(5), ['gap 0:0 2..4 replaying', 'replay#2 0:0 from 2 gap']],
      [reply(2, 4), ['lost 0:0 2 (replay started after the requested seq)', 'recover 0:0 4', '→ applied']],
      [end(2), ['ingest 0:0 5']],
    ],
  },
  {
    rule: "replay started late, onLoss 'reset': lost, then the rank is reset",
    opts: { replay: true, onLoss: 'reset' },
    steps: [
      ...WARM,
      [live(1), ['ingest 0:0 1']],
      [live(5), ['gap 0:0 2..4 replaying', 'replay#2 0:0 from 2 gap']],
      [reply(2, 4), ['lost 0:0 2 (replay started after the requested seq)', 'reset 0:0', 'recover 0:0 4', '→ applied']],
      [end(2), ['ingest 0:0 5']],
    ],
  },
  {
    rule: 'lost counts only what the engine cannot supply: held live messages the late replay skipped are applied, not lost',
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(2), ['gap 0:0 1..1 replaying', 'replay#2 0:0 from 1 gap']],
      [live(3), []],
      [live(4), []],
      [
        reply(2, 5),
        [
          'lost 0:0 1 (replay started after the requested seq)',
          'ingest 0:0 2',
          'ingest 0:0 3',
          'ingest 0:0 4',
          'recover 0:0 5',
          '→ applied',
        ],
      ],
      [end(2), []],
      [live(5), ['dup 0:0 5']],
    ],
  },
  {
    rule: 'hole in a replay after progress (replies dropped at a high-water mark): another round from the missing seq, nothing lost',
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(4), ['gap 0:0 1..3 replaying', 'replay#2 0:0 from 1 gap']],
      [reply(2, 1), ['recover 0:0 1', '→ applied']],
      [reply(2, 3), ['replay#2 0:0 from 2 gap', '→ hole']],
      [reply(2, 2), ['recover 0:0 2', '→ applied']],
      [reply(2, 3), ['recover 0:0 3', '→ applied']],
      [end(2), ['ingest 0:0 4']],
    ],
  },
  {
    rule: 'hole in a replay before a held live message: another round; held messages never overtake the missing seqs',
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(5), ['gap 0:0 1..4 replaying', 'replay#2 0:0 from 1 gap']],
      [live(7), []],
      [reply(2, 1), ['recover 0:0 1', '→ applied']],
      [reply(2, 6), ['replay#2 0:0 from 2 gap', '→ hole']],
      [reply(2, 2), ['recover 0:0 2', '→ applied']],
      [reply(2, 3), ['recover 0:0 3', '→ applied']],
      [reply(2, 4), ['recover 0:0 4', '→ applied']],
      [reply(2, 5), ['recover 0:0 5', '→ applied']],
      [reply(2, 6), ['dup 0:0 5', 'recover 0:0 6', '→ applied']],
      [end(2), ['ingest 0:0 7']],
    ],
  },
  {
    rule: 'hole in a replay beyond every held message: the engine has later seqs, another round fetches those before the hole',
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(2), ['gap 0:0 1..1 replaying', 'replay#2 0:0 from 1 gap']],
      [reply(2, 1), ['recover 0:0 1', '→ applied']],
      [reply(2, 4), ['ingest 0:0 2', 'replay#2 0:0 from 3 gap', '→ hole']],
      [reply(2, 3), ['recover 0:0 3', '→ applied']],
      [reply(2, 4), ['recover 0:0 4', '→ applied']],
      [end(2), []],
      [live(3), ['dup 0:0 3']],
      [live(4), ['dup 0:0 4']],
    ],
  },
  {
    rule: 'hole in a replay before any progress (the engine skipped seqs): they are lost',
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(1), ['ingest 0:0 1']],
      [live(4), ['gap 0:0 2..3 replaying', 'replay#2 0:0 from 2 gap']],
      [reply(2, 1), ['→ skipped']],
      [reply(2, 3), ['lost 0:0 1 (replay skipped seqs)', 'recover 0:0 3', '→ applied']],
      [end(2), ['ingest 0:0 4']],
    ],
  },
  {
    rule: 'replay stall (silence after some replies): counted, another round from the missing seq',
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(4), ['gap 0:0 1..3 replaying', 'replay#2 0:0 from 1 gap']],
      [reply(2, 1), ['recover 0:0 1', '→ applied']],
      [silent(2), ['stall#2 0:0 from 1', 'replay#2 0:0 from 2 gap']],
      [reply(2, 2), ['recover 0:0 2', '→ applied']],
      [reply(2, 3), ['recover 0:0 3', '→ applied']],
      [end(2), ['ingest 0:0 4']],
    ],
  },
  {
    rule: 'replay stall after the replies reached the held messages: the replay ends, nothing lost',
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(3), ['gap 0:0 1..2 replaying', 'replay#2 0:0 from 1 gap']],
      [reply(2, 1), ['recover 0:0 1', '→ applied']],
      [reply(2, 2), ['recover 0:0 2', '→ applied']],
      [silent(2), ['stall#2 0:0 from 1', 'ingest 0:0 3']],
    ],
  },
  {
    rule: "replay timeout (no reply at all), onLoss 'keep': the gap is lost, the held messages applied",
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(3), ['gap 0:0 1..2 replaying', 'replay#2 0:0 from 1 gap']],
      [live(4), []],
      [silent(2), ['timeout#2 0:0 from 1', 'lost 0:0 2 (replay did not fill the gap)', 'ingest 0:0 3', 'ingest 0:0 4']],
      [live(5), ['ingest 0:0 5']],
    ],
  },
  {
    rule: "replay timeout, onLoss 'reset': lost, the rank reset, then the held messages",
    opts: { replay: true, onLoss: 'reset' },
    steps: [
      ...WARM,
      [live(3), ['gap 0:0 1..2 replaying', 'replay#2 0:0 from 1 gap']],
      [silent(2), ['timeout#2 0:0 from 1', 'lost 0:0 2 (replay did not fill the gap)', 'reset 0:0', 'ingest 0:0 3']],
    ],
  },

  // held overflow
  {
    rule: 'held overflow (maxHeld): live messages not held are fetched again by a later round',
    opts: { replay: true, maxHeld: 2 },
    steps: [
      ...WARM,
      [live(3), ['gap 0:0 1..2 replaying', 'replay#2 0:0 from 1 gap']],
      [live(4), []],
      [live(5), ['overflow 0:0 5']],
      [live(6), ['overflow 0:0 6']],
      [reply(2, 1), ['recover 0:0 1', '→ applied']],
      [reply(2, 2), ['recover 0:0 2', '→ applied']],
      [reply(2, 3), ['recover 0:0 3', '→ applied']],
      [end(2), ['dup 0:0 3', 'ingest 0:0 4', 'replay#2 0:0 from 5 gap']],
      [reply(2, 5), ['recover 0:0 5', '→ applied']],
      [reply(2, 6), ['recover 0:0 6', '→ applied']],
      [end(2), []],
      [live(7), ['ingest 0:0 7']],
    ],
  },
  {
    rule: 'held overflow (maxHeldBytes): the same round may still bring the message not held',
    opts: { replay: true, maxHeldBytes: 8 }, // a payload here is 5 bytes
    steps: [
      ...WARM,
      [live(2), ['gap 0:0 1..1 replaying', 'replay#2 0:0 from 1 gap']],
      [live(3), ['overflow 0:0 3']],
      [reply(2, 1), ['recover 0:0 1', '→ applied']],
      [reply(2, 2), ['recover 0:0 2', '→ applied']],
      [reply(2, 3), ['dup 0:0 2', 'recover 0:0 3', '→ applied']],
      [end(2), []],
    ],
  },
  {
    rule: 'held overflow that no replay supplies is lost, and the stream goes on after the last live seq',
    opts: { replay: true, maxHeld: 1 },
    steps: [
      ...WARM,
      [live(2), ['gap 0:0 1..1 replaying', 'replay#2 0:0 from 1 gap']],
      [live(3), ['overflow 0:0 3']],
      [
        silent(2),
        ['timeout#2 0:0 from 1', 'lost 0:0 1 (replay did not fill the gap)', 'ingest 0:0 2', 'lost 0:0 1 (replay did not fill the gap)'],
      ],
      [live(4), ['ingest 0:0 4']],
    ],
  },

  // restarts
  {
    rule: 'restart by seq going back to 0, without replay: the rank is reset, the new stream starts there',
    steps: [
      [live(0), ['ingest 0:0 0']],
      [live(1), ['ingest 0:0 1']],
      [live(2), ['ingest 0:0 2']],
      [live(0), ['restart 0:0 seq', 'reset 0:0', 'ingest 0:0 0']],
      [live(1), ['ingest 0:0 1']],
    ],
  },
  {
    rule: "restart by a repeated seq, without replay: reset; the new incarnation's earlier seqs are lost",
    steps: [
      [live(0), ['ingest 0:0 0']],
      [live(1), ['ingest 0:0 1']],
      [live(1), ['restart 0:0 seq', 'reset 0:0', 'lost 0:0 1 (start of a restarted engine missed)', 'ingest 0:0 1']],
      [live(2), ['ingest 0:0 2']],
    ],
  },
  {
    rule: 'restart by seq with replay: reset, then the new incarnation replayed from 0 up to the message that revealed it',
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(1), ['ingest 0:0 1']],
      [live(2), ['ingest 0:0 2']],
      [live(1), ['restart 0:0 seq', 'reset 0:0', 'replay#2 0:0 from 0 restart']],
      [reply(2, 0), ['recover 0:0 0', '→ applied']],
      [reply(2, 1), ['recover 0:0 1', '→ applied']],
      [end(2), ['dup 0:0 1']],
      [live(2), ['ingest 0:0 2']],
    ],
  },
  {
    rule: "restart during a replay: the replay is cancelled and what it held dropped; the cancelled replay's replies are ignored",
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(3), ['gap 0:0 1..2 replaying', 'replay#2 0:0 from 1 gap']],
      [live(4), []],
      [live(1), ['restart 0:0 seq', 'cancel#2 0:0', 'reset 0:0', 'replay#3 0:0 from 0 restart']],
      [reply(2, 1), ['→ cancelled']],
      [end(2), []],
      [silent(2), []],
      [reply(3, 0), ['recover 0:0 0', '→ applied']],
      [reply(3, 1), ['recover 0:0 1', '→ applied']],
      [end(3), ['dup 0:0 1']],
    ],
  },
  {
    rule: 'restart by a changed vLLM publisher id while seqs go on (a batch without one changes nothing)',
    steps: [
      [live(0, { pid: 'A' }), ['ingest 0:0 0']],
      [live(1, { pid: 'A' }), ['ingest 0:0 1']],
      [live(2), ['ingest 0:0 2']],
      [live(3, { pid: 'B' }), ['restart 0:0 publisher_id', 'reset 0:0', 'lost 0:0 3 (start of a restarted engine missed)', 'ingest 0:0 3']],
      [live(4, { pid: 'B' }), ['ingest 0:0 4']],
    ],
  },
  {
    rule: 'restart by a changed SGLang topic epoch while seqs go on (read up to the next NUL; a topic without one changes nothing)',
    steps: [
      [live(0, { topic: 'kv\x00sgl-kv-epoch=1' }), ['ingest 0:0 0']],
      [live(1, { topic: 'kv' }), ['ingest 0:0 1']],
      [live(2, { topic: 'kv\x00sgl-kv-epoch=1' }), ['ingest 0:0 2']],
      [
        live(3, { topic: 'kv\x00sgl-kv-epoch=2\x00x' }),
        ['restart 0:0 topic_epoch', 'reset 0:0', 'lost 0:0 3 (start of a restarted engine missed)', 'ingest 0:0 3'],
      ],
      [live(4, { topic: 'kv\x00sgl-kv-epoch=2' }), ['ingest 0:0 4']],
    ],
  },
  {
    rule: 'restart by reconnect (connect mode), without replay: reset; the next message starts the stream, nothing lost',
    steps: [
      [live(0), ['ingest 0:0 0']],
      [live(1), ['ingest 0:0 1']],
      [disconnect(), []],
      [reconnect(), ['restart 0:0 reconnect', 'reset 0:0']],
      [live(5), ['ingest 0:0 5']],
    ],
  },
  {
    rule: 'restart by reconnect with replay: reset, replay from 0; live messages wait for it',
    opts: { replay: true },
    steps: [
      ...WARM,
      [disconnect(), []],
      [reconnect(), ['restart 0:0 reconnect', 'reset 0:0', 'replay#2 0:0 from 0 restart']],
      [live(2), []],
      [reply(2, 0), ['recover 0:0 0', '→ applied']],
      [reply(2, 1), ['recover 0:0 1', '→ applied']],
      [reply(2, 2), ['recover 0:0 2', '→ applied']],
      [end(2), ['dup 0:0 2']],
    ],
  },
  {
    rule: 'reconnect after a restart already seen since the disconnect: no second reset (one seen before the disconnect does not count)',
    steps: [
      [live(0), ['ingest 0:0 0']],
      [live(1), ['ingest 0:0 1']],
      [disconnect(), []],
      [live(0), ['restart 0:0 seq', 'reset 0:0', 'ingest 0:0 0']],
      [reconnect(), []],
      [live(1), ['ingest 0:0 1']],
      [disconnect(), []],
      [reconnect(), ['restart 0:0 reconnect', 'reset 0:0']],
    ],
  },
  {
    rule: 'reconnect restarts the ranks last seen on that endpoint only',
    opts: { endpoints: 2 },
    steps: [
      [live(0, { ep: 0, rank: 0 }), ['ingest 0:0 0']],
      [live(0, { ep: 1, rank: 1 }), ['ingest 1:1 0']],
      [live(0, { ep: 0, rank: 2 }), ['ingest 0:2 0']],
      [disconnect(0), []],
      [reconnect(0), ['restart 0:0 reconnect', 'reset 0:0', 'restart 0:2 reconnect', 'reset 0:2']],
      [live(1, { ep: 1, rank: 1 }), ['ingest 1:1 1']],
    ],
  },
  {
    rule: 'bind mode: connection events are ignored (several engines share the endpoint)',
    opts: { bind: true },
    steps: [
      [live(0), ['ingest 0:0 0']],
      [live(1), ['ingest 0:0 1']],
      [disconnect(), []],
      [reconnect(), []],
      [live(2), ['ingest 0:0 2']],
      [live(0), ['restart 0:0 seq', 'reset 0:0', 'ingest 0:0 0']],
    ],
  },

  // malformed payloads
  {
    rule: "malformed payload at the next seq of the endpoint's last stream: takes its seq (no gap, no replay), applies nothing",
    opts: { replay: true },
    steps: [...WARM, [live(1, { malformed: true }), ['drop malformed 0:0 1']], [live(2), ['ingest 0:0 2']]],
  },
  {
    rule: 'malformed payload that cannot be placed (no stream yet, not the next seq): dropped, no stream touched (no false restart or gap)',
    steps: [
      [live(0, { malformed: true }), ['drop malformed 0:- 0']],
      [live(0), ['ingest 0:0 0']],
      [live(5, { malformed: true }), ['drop malformed 0:- 5']],
      [live(0, { malformed: true }), ['drop malformed 0:- 0']],
      [live(1), ['ingest 0:0 1']],
    ],
  },
  {
    rule: "malformed payload belongs to the endpoint's last rank seen",
    steps: [
      [live(0, { rank: 0 }), ['ingest 0:0 0']],
      [live(0, { rank: 1 }), ['ingest 0:1 0']],
      [live(1, { malformed: true }), ['drop malformed 0:1 1']],
      [live(2, { rank: 1 }), ['ingest 0:1 2']],
      [live(1, { rank: 0 }), ['ingest 0:0 1']],
    ],
  },
  {
    rule: 'malformed payload held during a replay: dropped in its turn, its seq taken',
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(2), ['gap 0:0 1..1 replaying', 'replay#2 0:0 from 1 gap']],
      [live(3, { malformed: true }), []],
      [reply(2, 1), ['recover 0:0 1', '→ applied']],
      [end(2), ['ingest 0:0 2', 'drop malformed 0:0 3']],
      [live(4), ['ingest 0:0 4']],
    ],
  },
  {
    rule: 'malformed replayed batch: takes its seq, applies nothing',
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(3), ['gap 0:0 1..2 replaying', 'replay#2 0:0 from 1 gap']],
      [reply(2, 1, { malformed: true }), ['drop malformed 0:0 1', '→ applied']],
      [reply(2, 2), ['recover 0:0 2', '→ applied']],
      [end(2), ['ingest 0:0 3']],
    ],
  },
  {
    rule: 'replay reply of another dp rank: dropped',
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(2), ['gap 0:0 1..1 replaying', 'replay#2 0:0 from 1 gap']],
      [reply(2, 1, { rank: 1 }), ['drop replay 0:1 1', '→ skipped']],
      [reply(2, 1), ['recover 0:0 1', '→ applied']],
      [end(2), ['ingest 0:0 2']],
    ],
  },

  // streams
  {
    rule: 'rank limit: a rank beyond the tracked streams is dropped, the tracked ones go on',
    opts: { maxStreams: 2 },
    steps: [
      [live(0, { rank: 0 }), ['ingest 0:0 0']],
      [live(0, { rank: 1 }), ['ingest 0:1 0']],
      [live(0, { rank: 2 }), ['drop rank 0:2 0']],
      [live(1, { rank: 2 }), ['drop rank 0:2 1']],
      [live(1, { rank: 0 }), ['ingest 0:0 1']],
      [live(1, { rank: 1 }), ['ingest 0:1 1']],
    ],
  },
  {
    rule: 'streams are per (endpoint, dp rank): the same rank on two endpoints, a gap on one leaves the other',
    opts: { endpoints: 2 },
    steps: [
      [live(0, { ep: 0 }), ['ingest 0:0 0']],
      [live(0, { ep: 1 }), ['ingest 1:0 0']],
      [live(1, { ep: 0 }), ['ingest 0:0 1']],
      [live(3, { ep: 1 }), ['gap 1:0 1..2', 'lost 1:0 2 (gap without a replay endpoint)', 'ingest 1:0 3']],
      [live(2, { ep: 0 }), ['ingest 0:0 2']],
    ],
  },
  {
    rule: "streams are per (endpoint, dp rank): one rank's replay does not hold another rank's messages",
    opts: { replay: true },
    steps: [
      ...WARM,
      [live(0, { rank: 1 }), ['replay#2 0:1 from 0 initial']],
      [live(1, { rank: 0 }), ['ingest 0:0 1']],
      [reply(2, 0, { rank: 1 }), ['recover 0:1 0', '→ applied']],
      [end(2), ['dup 0:1 0']],
    ],
  },
]

function sequencer(c: Case): Sequencer {
  const { replay = false, endpoints = 1, ...rest } = c.opts ?? {}
  return new Sequencer({
    endpoints: Array.from({ length: endpoints }, () => ({ replay })),
    bind: false,
    onLoss: 'keep',
    maxHeld: 100,
    maxHeldBytes: 1 << 20,
    ...rest,
  })
}

for (const c of cases) {
  test(`sequencer: ${c.rule}`, (t) => {
    const s = sequencer(c)
    c.steps.forEach(([step, expected], i) => {
      t.deepEqual(feed(s, step), expected, `step ${i + 1}: ${JSON.stringify(step, (_, v) => (typeof v === 'bigint' ? `${v}n` : v))}`)
    })
    // whatever a case leaves open is visible in its last expected actions; every case here ends at rest
    t.is(s.replaysActive(), 0, 'no replay left running')
    t.is(s.held(), 0, 'nothing left held')
  })
}

// ---------------------------------------------------------------------------------------------------
// replay reply layouts (replay.ts parses, the sequencer decides)

const seq8 = (n: bigint) => {
  const b = Buffer.alloc(8)
  b.writeBigUInt64BE(n)
  return b
}
const E = Buffer.alloc(0)
const END = Buffer.alloc(8, 0xff)

test('replay layouts: vLLM <= 0.25 / SGLang ["", seq, payload] and vLLM >= 0.26 / TensorRT-LLM ["", topic, seq, payload]', (t) => {
  t.deepEqual(parseReply([E, seq8(7n), Buffer.from('p')]), { seq: 7n, payload: Buffer.from('p') })
  t.deepEqual(parseReply([E, Buffer.from('kv'), seq8(2n ** 63n + 1n), Buffer.from('q')]), {
    seq: 2n ** 63n + 1n,
    payload: Buffer.from('q'),
  })
})

test('replay layouts: the end marker in either layout', (t) => {
  t.is(parseReply([E, END, E]), 'end')
  t.is(parseReply([E, E, END, E]), 'end')
})

test('replay layouts: anything else is an unknown reply', (t) => {
  t.is(parseReply([Buffer.from('x'), seq8(1n), Buffer.from('p')]), null, 'a first frame that is not empty')
  t.is(parseReply([E, seq8(1n)]), null, '2 frames')
  t.is(parseReply([E, E, E, seq8(1n), Buffer.from('p')]), null, '5 frames')
  t.is(parseReply([E, Buffer.alloc(7), Buffer.from('p')]), null, 'a 7-byte seq')
  t.is(parseReply([E, Buffer.from('kv'), Buffer.alloc(9), Buffer.from('p')]), null, 'a 9-byte seq')
})
