/**
 * The environment variables a component reads its defaults from (`process.env` unless given): every
 * option that has a variable takes it from here when the option itself is absent.
 */
export type Env = Record<string, string | undefined>
