// Names of the Dynamo 1.4+ event plane (SPEC 5b): the endpoint-scoped NATS subject of a topic. Built by
// the core (the subject prefix of a NATS EventChannel record), so the subject and the record a router
// reads can never disagree.
import { raw } from '../core/native.js'

/** `namespace.{ns}.component.{c}.endpoint.{e}.{topic}`, each name percent-encoded (SPEC 5b). */
export function endpointSubject(namespace: string, component: string, endpoint: string, topic: string): string {
  const rec = raw.eventChannelRecord({ endpoint: { namespace, component, name: endpoint }, topic, publisherId: 1n, zmqEndpoint: null })
  const m = /"subject_prefix":"([^"]*)"/.exec(rec.value.toString('utf8'))
  if (m === null) throw new Error('the core built a NATS EventChannel record without a subject_prefix')
  return `${m[1]}.${topic}`
}
