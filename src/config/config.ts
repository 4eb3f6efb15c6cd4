/**
 * The config module in one import. The code lives in load.ts (loading), errors.ts,
 * types.ts (the resolved Config), schema.ts (the schema and the raw type derived
 * from it), semantic.ts (checks on meaning) and validator.ts (ajv and its
 * messages); vpm's own modules import those directly.
 */

export * from './errors.js';
export * from './load.js';
export { configSchema, configSchemaPath, configSchemaText, type RawConfig } from './schema.js';
export type * from './types.js';
