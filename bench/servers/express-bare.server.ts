// The anchor: what the route costs with no offload at all. Express 5, `express.json()`, and an
// immediate 200 with a small JSON body.
import { createServer } from 'node:http';
import express from 'express';
import { serve } from './serve.js';

const app = express();
app.disable('x-powered-by');
app.use(express.json());
app.post('/reports', (req, res) => {
  res.status(200).json({ ok: true, month: req.body.month });
});

serve(createServer(app));
