import { Body, Controller, Get, Header, Post } from '@nestjs/common';
import { Background, type Job, JobContext } from 'offload/nest';
import { clientScript, clientScriptPath, samplePage } from '../shared/page.js';
import { ReportRequest } from '../shared/report.dto.js';
import { buildReport } from '../shared/report.task.js';

@Controller()
export class ReportsController {
  /** Answers 202 with a status URL; a worker runs the body later, with the same validated DTO. */
  @Post('reports')
  @Background({ name: 'report' })
  generate(@Body() request: ReportRequest, @JobContext() job: Job) {
    return buildReport(request, job);
  }

  @Get()
  @Header('Content-Type', 'text/html; charset=utf-8')
  page(): string {
    return samplePage;
  }

  /** The browser client the page imports (`offload/client`). */
  @Get(clientScriptPath)
  @Header('Content-Type', 'text/javascript; charset=utf-8')
  client(): string {
    return clientScript;
  }
}
