/**
 * Writes docs/config.schema.json, the published config schema, from its one
 * source, src/config/schema.ts. Run after changing the schema (after
 * `npm run build`): `node dist/scripts/emit-config-schema.js`.
 * test/config/schema.test.ts fails while the two differ.
 */

import { writeFileSync } from 'node:fs';
import { configSchemaPath, configSchemaText } from '../src/config/schema.js';

writeFileSync(configSchemaPath(), configSchemaText());
console.log(`wrote ${configSchemaPath()}`);
